"""What the video subcommands share: their flags (frames, fps, decode chunks, output), the
cheap checks of those flags, and writing a video with its JSON settings beside it."""

from __future__ import annotations

import argparse
import json
import shlex
from datetime import UTC, datetime
from pathlib import Path

import jax

from mv2_jax.commands.common import add_device_flags, add_sampling_flags, versions
from mv2_jax.media import VIDEO_SUFFIXES, write_video


def add_video_flags(parser: argparse.ArgumentParser, frames_default: int | None) -> None:
    """The flags text → video and image → video share (after --model and --prompt)."""
    flag = parser.add_argument
    flag(
        "--negative-prompt",
        metavar="TEXT",
        help="what to steer away from (classifier-free guidance; default: the empty prompt)",
    )
    default = frames_default or "32 (the paper's) or the model's maximum if lower"
    flag(
        "--num-frames",
        type=int,
        default=frames_default,
        metavar="N",
        help="frames to generate, 1 to the motion modules' motion_max_seq_length (32 for "
        f"AnimateDiff v2/v3, 24 for v1; default {default})",
    )
    add_sampling_flags(parser, steps=25, guidance="7.5")
    flag("--fps", type=float, default=8.0, help="frame rate written to the video (default 8)")
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


def video_problems(args: argparse.Namespace) -> list[str]:
    """The cheap checks of `add_video_flags`'s flags."""
    problems = []
    if args.num_frames is not None and args.num_frames < 1:
        problems.append(f"--num-frames {args.num_frames}: needs at least 1 frame")
    if args.decode_chunk_size < 1:
        problems.append(f"--decode-chunk-size {args.decode_chunk_size}: needs at least 1")
    if not args.fps > 0:
        problems.append(f"--fps {args.fps}: must be positive")
    out = Path(args.out)
    if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
        problems.append(
            f"--out {args.out}: unsupported suffix {out.suffix!r}; use .mp4, .gif, or no "
            "suffix for a folder of PNG frames"
        )
    elif not out.suffix and out.exists() and any(out.iterdir() if out.is_dir() else [out]):
        problems.append(f"--out {args.out} exists; frames go to a new or empty folder")
    return problems


def write_video_and_settings(videos, args, argv: list[str], mesh, pipe, **extra) -> None:
    """The first video to `--out`, every setting (plus `extra`) to the JSON beside it."""
    if jax.process_index() != 0:
        return
    path = write_video(videos[0], args.out, fps=args.fps)
    settings = {
        "video": path.name,
        "model": str(Path(args.model).resolve()),
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        **extra,
        "seed": args.seed,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance_scale": args.guidance_scale
        if args.guidance_scale is not None
        else getattr(pipe, "default_guidance_scale", None),
        "num_frames": int(videos.shape[1]),
        "height": int(videos.shape[2]),
        "width": int(videos.shape[3]),
        "fps": args.fps,
        "dtype": args.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": shlex.join(["python", "sample.py", *argv]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    sidecar = path.with_suffix(".json") if path.suffix else path / "settings.json"
    sidecar.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {path} ({videos.shape[1]} frames) and its settings to {sidecar}")
