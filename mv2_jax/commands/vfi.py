"""`sample.py vfi`: frame interpolation ×k of a video (.mp4, .gif or a folder of PNG frames)
with a FrameInterpolator (by default the weights shipped in the package); writes OUT and its
JSON settings beside it."""

from __future__ import annotations

import argparse
import json
import shlex
from datetime import UTC, datetime
from pathlib import Path

import jax

from mv2_jax.commands.common import DTYPES, UsageError, dtype_of, versions
from mv2_jax.media import VIDEO_SUFFIXES, read_video, write_video

DEFAULT_FPS = 8.0  # a folder of frames has no rate of its own


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
        type=float,
        metavar="FPS",
        help=f"frame rate written to the output (default: the input's × K, so the clip keeps "
        f"its duration; {DEFAULT_FPS:g} × K for a folder of frames)",
    )
    flag(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="precision of params and compute (default fp32; bf16 for accelerators)",
    )
    flag(
        "--out",
        default="interpolated.mp4",
        metavar="PATH",
        help="the video: .mp4 (H.264), .gif, or a path without suffix for a new folder of "
        "numbered PNG frames; the settings go to the same name with .json (a folder: its "
        "settings.json; default interpolated.mp4)",
    )


def check(args: argparse.Namespace) -> None:
    """Every cheap check of the vfi flags (nothing is read or loaded), reported at once."""
    problems = []
    source = Path(args.input)
    if not source.exists():
        problems.append(f"--input {args.input}: no such file or folder")
    elif source.is_file() and source.stat().st_size == 0:
        problems.append(f"--input {args.input}: cannot decode an empty file")
    if args.factor < 1:
        problems.append(f"--factor {args.factor}: must be an integer ≥ 1 (1 adds no frames)")
    if args.batch_size < 1:
        problems.append(f"--batch-size {args.batch_size}: needs at least 1")
    if args.fps is not None and not args.fps > 0:
        problems.append(f"--fps {args.fps}: must be positive")
    if args.model is not None and Path(args.model).is_file():
        problems.append(
            f"--model {args.model} is a file; RIFE v4.0–4.6 weights convert with `python "
            f"convert/rife_to_vfi.py {args.model} --out DIR`, then pass --model DIR"
        )
    elif args.model is not None and not Path(args.model).is_dir():
        problems.append(
            f"--model {args.model}: no such folder; pass a FrameInterpolator folder, or leave "
            "--model out to use the shipped weights"
        )
    out = Path(args.out)
    if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
        problems.append(
            f"--out {args.out}: unsupported suffix {out.suffix!r}; use .mp4, .gif, or no "
            "suffix for a folder of PNG frames"
        )
    elif not out.suffix and out.exists() and any(out.iterdir() if out.is_dir() else [out]):
        problems.append(f"--out {args.out} exists; frames go to a new or empty folder")
    if problems:
        raise UsageError("\n".join(problems))


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from mv2_jax.pipelines.vfi import load_vfi_pipeline, vfi_model_folder

    check(args)
    try:
        frames, input_fps = read_video(args.input)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot decode --input {args.input}: {e}") from e
    if len(frames) < 2:
        raise UsageError(
            f"--input {args.input} has {len(frames)} frame; interpolation needs at least 2"
        )
    model = vfi_model_folder(args.model)
    pipe = load_vfi_pipeline(model, dtype=dtype_of(args))
    video = pipe(frames, factor=args.factor, batch_size=args.batch_size, progress=True)
    fps = args.fps or (input_fps or DEFAULT_FPS) * args.factor
    if jax.process_index() != 0:
        return 0
    path = write_video(video, args.out, fps=fps)
    settings = {
        "video": path.name,
        "input": str(Path(args.input).resolve()),
        "model": str(model.resolve()),
        "factor": args.factor,
        "input_frames": len(frames),
        "num_frames": len(video),
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "input_fps": input_fps,
        "fps": fps,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "command": shlex.join(["python", "sample.py", *argv]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    sidecar = path.with_suffix(".json") if path.suffix else path / "settings.json"
    sidecar.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {path} ({len(video)} frames from {len(frames)}) and its settings to {sidecar}")
    return 0
