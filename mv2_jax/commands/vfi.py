"""`sample.py vfi`: frame interpolation ×k of a video (.mp4, .gif or a folder of PNG frames)
with a FrameInterpolator (by default the weights shipped in the package); writes OUT and its
JSON settings beside it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mv2_jax.commands.common import (
    RuntimeFlags,
    UsageError,
    add_dtype_flag,
    add_runtime_flags,
    finite_float,
    from_namespace,
    runtime_problems,
    versions,
)
from mv2_jax.commands.session import Session
from mv2_jax.commands.video import (
    command_line,
    fps_problems,
    settings_path,
    stage_video,
    video_out_problems,
)
from mv2_jax.dtypes import parse_dtype

DEFAULT_FPS = 8.0  # a folder of frames has no rate of its own


@dataclass(frozen=True)
class VFIFlags:
    input: str
    factor: int
    model: str | None
    batch_size: int
    fps: float | None
    dtype: str
    out: str
    runtime: RuntimeFlags


def settings(args: argparse.Namespace) -> VFIFlags:
    return from_namespace(VFIFlags, args, runtime=from_namespace(RuntimeFlags, args))


def add_parser(commands) -> None:
    vfi = commands.add_parser(
        "vfi",
        help="frame interpolation: k − 1 new frames between every two (×k, one pass each)",
        description="Frame interpolation ×k: N frames in, (N−1)·k+1 out at the same size, the "
        "input frames kept. Writes OUT (.mp4, .gif, or a folder of PNG frames) and OUT's name "
        "with .json (every setting and the library versions) beside it.",
    )
    flag = vfi.add_argument
    flag(
        "--input",
        required=True,
        metavar="PATH",
        help="the video: .mp4, .gif (anything FFmpeg decodes) or a folder of numbered PNG "
        "frames (00000.png, …); at least 2 frames",
    )
    flag(
        "--factor",
        type=int,
        default=3,
        metavar="K",
        help="frames per input gap in the output, an integer ≥ 1: K−1 new frames at t = j/K "
        "between every two; 1 copies the input (default 3)",
    )
    flag(
        "--model",
        metavar="FOLDER",
        help="a FrameInterpolator folder (config.json + safetensors, e.g. exported by "
        "train.py --config configs/vfi.py, or RIFE v4.0–4.6 weights converted by "
        "convert/rife_to_vfi.py) or a FrameInterpolationPipeline folder (default: the "
        "weights shipped with mv2_jax)",
    )
    flag(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="new frames made per model call; lower it if memory runs out (default 8)",
    )
    flag(
        "--fps",
        type=finite_float,
        metavar="FPS",
        help=f"frame rate written to the output (default: the input's × K, so the clip keeps "
        f"its duration; {DEFAULT_FPS:g} × K for a folder of frames)",
    )
    add_dtype_flag(vfi)
    add_runtime_flags(vfi)
    flag(
        "--out",
        default="interpolated.mp4",
        metavar="PATH",
        help="the video: .mp4 (H.264), .gif, or a path without suffix for a new folder of "
        "numbered PNG frames; the settings go to the same name with .json (a folder: its "
        "settings.json; default interpolated.mp4)",
    )


def check(flags: VFIFlags) -> None:
    """Every cheap check of the vfi flags (nothing is read or loaded), reported at once."""
    problems = []
    source = Path(flags.input)
    if not source.exists():
        problems.append(f"--input {flags.input}: no such file or folder")
    elif source.is_file() and source.stat().st_size == 0:
        problems.append(f"--input {flags.input}: cannot decode an empty file")
    if flags.factor < 1:
        problems.append(f"--factor {flags.factor}: must be an integer ≥ 1 (1 adds no frames)")
    if flags.batch_size < 1:
        problems.append(f"--batch-size {flags.batch_size}: needs at least 1")
    problems += fps_problems(flags.fps)
    if flags.model is not None and Path(flags.model).is_file():
        problems.append(
            f"--model {flags.model} is a file; RIFE v4.0–4.6 weights convert with `python "
            f"convert/rife_to_vfi.py {flags.model} --out DIR`, then pass --model DIR"
        )
    elif flags.model is not None and not Path(flags.model).is_dir():
        problems.append(
            f"--model {flags.model}: no such folder; pass a FrameInterpolator folder, or leave "
            "--model out to use the shipped weights"
        )
    problems += video_out_problems(flags.out) + runtime_problems(flags.runtime)
    if problems:
        raise UsageError("\n".join(problems))


def run(flags: VFIFlags, session: Session) -> int:
    import jax

    from mv2_jax.media import read_video
    from mv2_jax.pipelines.vfi import load_vfi_pipeline, vfi_model_folder

    session.progress(f"reading {flags.input}")
    try:
        frames, input_fps = read_video(flags.input)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot decode --input {flags.input}: {e}") from e
    if len(frames) < 2:
        raise UsageError(
            f"--input {flags.input} has {len(frames)} frame; interpolation needs at least 2"
        )
    model = vfi_model_folder(flags.model)
    session.progress(f"loading the frame interpolator {model}")
    pipe = load_vfi_pipeline(model, dtype=parse_dtype(flags.dtype))
    session.progress("interpolating (compiling or restoring the compiled program first)")
    video = pipe(frames, factor=flags.factor, batch_size=flags.batch_size, progress=True)
    fps = flags.fps or (input_fps or DEFAULT_FPS) * flags.factor
    if jax.process_index() != 0:
        return 0
    record = {
        "input": str(Path(flags.input).resolve()),
        "model": str(model.resolve()),
        "factor": flags.factor,
        "input_frames": len(frames),
        "num_frames": len(video),
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "input_fps": input_fps,
        "fps": fps,
        "batch_size": flags.batch_size,
        "dtype": flags.dtype,
        "command": command_line(session),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    path = stage_video(session, video, flags.out, fps, record)
    session.guard.commit()
    sidecar = settings_path(path)
    print(f"wrote {path} ({len(video)} frames from {len(frames)}) and its settings to {sidecar}")
    return 0
