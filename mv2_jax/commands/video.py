"""What the video subcommands share: their flags (frames, fps, decode chunks, output) and the
settings those become, the cheap checks of those flags, and writing a video with its JSON
settings beside it."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mv2_jax.commands.common import (
    DeviceFlags,
    SamplingFlags,
    add_device_flags,
    add_sampling_flags,
    finite_float,
    output_problems,
    versions,
)
from mv2_jax.commands.session import Session
from mv2_jax.media import VIDEO_SUFFIXES, write_video


@dataclass(frozen=True)
class VideoFlags:
    """The flags of `add_video_flags` but the sampling and device ones."""

    negative_prompt: str | None
    num_frames: int | None
    fps: float
    decode_chunk_size: int
    out: str


def add_video_flags(parser: argparse.ArgumentParser, stage: str) -> None:
    """The flags text → video and image → video share (after --model and --prompt), with
    `stage`'s defaults (`mv2_jax.pipelines.defaults.STAGE_DEFAULTS`)."""
    from mv2_jax.pipelines.defaults import STAGE_DEFAULTS

    defaults = STAGE_DEFAULTS[stage]
    flag = parser.add_argument
    flag(
        "--negative-prompt",
        metavar="TEXT",
        help="what to steer away from (classifier-free guidance; default: the empty prompt)",
    )
    frames = defaults.num_frames if stage == "t2v" else None  # i2v: the model's limit too
    default = {
        "t2v": frames,
        "i2v": f"{defaults.num_frames} (the paper's) or the model's maximum if lower",
        "v2v": "all of the input's, up to the model's maximum",
    }[stage]
    flag(
        "--num-frames",
        type=int,
        default=frames,
        metavar="N",
        help="frames to generate, 1 to the motion modules' motion_max_seq_length (32 for "
        f"AnimateDiff v2/v3, 24 for v1; default {default})",
    )
    add_sampling_flags(parser, steps=defaults.steps, guidance="7.5")
    flag(
        "--fps",
        type=finite_float,
        default=8.0,
        help="frame rate written to the video (default 8)",
    )
    flag(
        "--decode-chunk-size",
        type=int,
        default=16,
        metavar="N",
        help="frames the VAE decodes at once; lower it if decoding runs out of memory (default 16)",
    )
    add_device_flags(parser)
    flag(
        "--out",
        default="video.mp4",
        metavar="PATH",
        help="the video: .mp4 (H.264), .gif, or a path without suffix for a new folder of "
        "numbered PNG frames; the settings go to the same name with .json (a folder: its "
        "settings.json; default video.mp4)",
    )


def video_out_problems(value: str) -> list[str]:
    """`--out` of a video: a .mp4 / .gif file, or a new or empty folder of PNG frames."""
    out = Path(value)
    if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
        return [
            f"--out {value}: unsupported suffix {out.suffix!r}; use .mp4, .gif, or no "
            "suffix for a folder of PNG frames"
        ]
    if not out.suffix and out.is_dir() and any(out.iterdir()):
        return [f"--out {value} exists; frames go to a new or empty folder"]
    return output_problems("--out", value, folder=not out.suffix)


def fps_problems(fps: float | None) -> list[str]:
    return [] if fps is None or fps > 0 else [f"--fps {fps}: must be positive"]


def video_problems(flags: VideoFlags) -> list[str]:
    """The cheap checks of `add_video_flags`'s flags."""
    problems = []
    if flags.num_frames is not None and flags.num_frames < 1:
        problems.append(f"--num-frames {flags.num_frames}: needs at least 1 frame")
    if flags.decode_chunk_size < 1:
        problems.append(f"--decode-chunk-size {flags.decode_chunk_size}: needs at least 1")
    return problems + fps_problems(flags.fps) + video_out_problems(flags.out)


def settings_path(video: Path) -> Path:
    """The JSON beside a video file, or inside a folder of frames."""
    return video.with_suffix(".json") if video.suffix else video / "settings.json"


def stage_video(session: Session, frames, out: str, fps: float, settings: dict) -> Path:
    """`frames [F,H,W,3]` and `settings` (as JSON beside them) written under temporary names;
    `session.guard.commit()` gives them their final ones. Returns the final video path."""
    final = Path(out)
    session.progress(f"writing {final}")
    video = write_video(frames, session.guard.stage(final), fps=fps)
    sidecar = settings_path(final)
    record = {**settings, "video": final.name}
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    # a folder of frames holds its settings; a file has them staged beside it
    staged_sidecar = session.guard.stage(sidecar) if final.suffix else settings_path(video)
    staged_sidecar.write_text(text)
    return final


def write_video_and_settings(
    videos,
    sampling: SamplingFlags,
    video: VideoFlags,
    device: DeviceFlags,
    prompt: str,
    session: Session,
    mesh,
    pipe,
    **extra,
) -> None:
    """The first video to `--out`, every setting (plus `extra`) to the JSON beside it."""
    import jax

    if jax.process_index() != 0:
        return
    settings = {
        "model": str(Path(sampling.model).resolve()),
        "loras": [str(lora) for lora in sampling.lora],
        "prompt": prompt,
        "negative_prompt": video.negative_prompt,
        **extra,
        "seed": sampling.seed,
        "steps": sampling.steps,
        "scheduler": sampling.scheduler,
        "guidance_scale": sampling.guidance_scale
        if sampling.guidance_scale is not None
        else getattr(pipe, "default_guidance_scale", None),
        "num_frames": int(videos.shape[1]),
        "height": int(videos.shape[2]),
        "width": int(videos.shape[3]),
        "fps": video.fps,
        "dtype": device.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": command_line(session),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    path = stage_video(session, videos[0], video.out, video.fps, settings)
    session.guard.commit()
    print(f"wrote {path} ({videos.shape[1]} frames) and its settings to {settings_path(path)}")


def command_line(session: Session, program: str = "sample.py") -> str:
    return shlex.join(["python", program, *session.argv])
