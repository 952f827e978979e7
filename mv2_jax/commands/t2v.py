"""`sample.py t2v`: text → video with an AnimateDiff pipeline folder (SD1.x UNet + motion
modules); writes OUT (.mp4, .gif or a folder of PNG frames) and its JSON settings."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import mv2_jax
from mv2_jax.commands.common import (
    DeviceFlags,
    RuntimeFlags,
    SamplingFlags,
    UsageError,
    add_model_flag,
    build_mesh,
    from_namespace,
    runtime_problems,
    sampling_kwargs,
    sampling_problems,
)
from mv2_jax.commands.lora_flags import apply_loras
from mv2_jax.commands.session import Session
from mv2_jax.commands.video import (
    VideoFlags,
    add_video_flags,
    video_problems,
    write_video_and_settings,
)
from mv2_jax.dtypes import parse_dtype


@dataclass(frozen=True)
class T2VFlags:
    prompt: str
    sampling: SamplingFlags
    video: VideoFlags
    device: DeviceFlags
    runtime: RuntimeFlags


def settings(args: argparse.Namespace) -> T2VFlags:
    return T2VFlags(
        prompt=args.prompt,
        sampling=from_namespace(SamplingFlags, args),
        video=from_namespace(VideoFlags, args),
        device=from_namespace(DeviceFlags, args),
        runtime=from_namespace(RuntimeFlags, args),
    )


def add_parser(commands) -> None:
    t2v = commands.add_parser(
        "t2v",
        help="text → video with an AnimateDiff pipeline folder (SD1.5 + motion modules)",
        description="Text → video. Writes OUT (.mp4, .gif, or a folder of PNG frames) and "
        "OUT's name with .json (every setting and the library versions) beside it.",
    )
    add_model_flag(t2v, "an AnimateDiff (SD1.x UNet + motion modules)")
    t2v.add_argument("--prompt", required=True, metavar="TEXT", help="the text to animate")
    add_video_flags(t2v, "t2v")


def check(flags: T2VFlags) -> None:
    """Every cheap check of the t2v flags, all problems reported at once."""
    problems = sampling_problems(flags.sampling)
    model = flags.sampling.model
    index = Path(model, "model_index.json")
    if not problems and index.is_file():
        kind = json.loads(index.read_text()).get("_class_name")
        if kind in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
            problems.append(
                f"--model {model} is a {kind} (text → image): use `sample.py t2i`, or "
                "add motion modules with `python convert/to_flax.py FOLDER --motion-adapter "
                "MOTION_MODULE.ckpt --out DIR` and pass --model DIR"
            )
    problems += video_problems(flags.video) + runtime_problems(flags.runtime)
    if problems:
        raise UsageError("\n".join(problems))


def run(flags: T2VFlags, session: Session) -> int:
    mesh = build_mesh(flags.device.mesh)
    session.progress(f"loading the T2V model {flags.sampling.model}")
    pipe = mv2_jax.load_pipeline(flags.sampling.model, dtype=parse_dtype(flags.device.dtype))
    apply_loras(pipe, flags.sampling.lora, session.progress)
    session.progress("sampling (compiling or restoring the compiled program first)")
    videos = pipe(
        flags.prompt,
        negative_prompt=flags.video.negative_prompt,
        num_frames=flags.video.num_frames,
        decode_chunk_size=flags.video.decode_chunk_size,
        **sampling_kwargs(flags.sampling, flags.device, mesh),
    )
    write_video_and_settings(
        videos, flags.sampling, flags.video, flags.device, flags.prompt, session, mesh, pipe
    )
    return 0
