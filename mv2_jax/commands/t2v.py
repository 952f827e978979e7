"""`sample.py t2v`: text → video with an AnimateDiff pipeline folder (SD1.x UNet + motion
modules); writes OUT (.mp4, .gif or a folder of PNG frames) and its JSON settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mv2_jax
from mv2_jax.commands.common import (
    UsageError,
    add_model_flag,
    build_mesh,
    dtype_of,
    sampling_kwargs,
    sampling_problems,
)
from mv2_jax.commands.video import add_video_flags, video_problems, write_video_and_settings


def add_parser(commands) -> None:
    t2v = commands.add_parser(
        "t2v",
        help="text → video with an AnimateDiff pipeline folder (SD1.5 + motion modules)",
        description="Text → video. Writes OUT (.mp4, .gif, or a folder of PNG frames) and "
        "OUT's name with .json (every setting and the library versions) beside it.",
    )
    add_model_flag(t2v, "an AnimateDiff (SD1.x UNet + motion modules)")
    t2v.add_argument("--prompt", required=True, metavar="TEXT", help="the text to animate")
    add_video_flags(t2v, frames_default=16)


def check(args: argparse.Namespace) -> None:
    """Every cheap check of the t2v flags, all problems reported at once."""
    problems = sampling_problems(args)
    index = Path(args.model, "model_index.json")
    if not problems and index.is_file():
        kind = json.loads(index.read_text()).get("_class_name")
        if kind in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
            problems.append(
                f"--model {args.model} is a {kind} (text → image): use `sample.py t2i`, or "
                "add motion modules with `python convert/to_flax.py FOLDER --motion-adapter "
                "MOTION_MODULE.ckpt --out DIR` and pass --model DIR"
            )
    problems += video_problems(args)
    if problems:
        raise UsageError("\n".join(problems))


def run(args: argparse.Namespace, argv: list[str]) -> int:
    check(args)
    mesh = build_mesh(args.mesh)
    pipe = mv2_jax.load_pipeline(args.model, dtype=dtype_of(args))
    videos = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=args.num_frames,
        decode_chunk_size=args.decode_chunk_size,
        **sampling_kwargs(args, mesh),
    )
    write_video_and_settings(videos, args, argv, mesh, pipe)
    return 0
