"""`sample.py t2i`: text → image with an SD1.x / SD2.x / SDXL pipeline folder; every image is
written as `OUT/NNNNN.png` with `OUT/NNNNN.json` beside it (settings and library versions)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

import mv2_jax
from mv2_jax.commands.common import (
    DeviceFlags,
    RuntimeFlags,
    SamplingFlags,
    UsageError,
    add_device_flags,
    add_model_flag,
    add_sampling_flags,
    build_mesh,
    from_namespace,
    output_problems,
    runtime_problems,
    sampling_kwargs,
    sampling_problems,
    versions,
)
from mv2_jax.commands.lora_flags import apply_loras
from mv2_jax.commands.session import Session
from mv2_jax.commands.video import command_line
from mv2_jax.dtypes import parse_dtype
from mv2_jax.media import next_index, to_uint8
from mv2_jax.pipelines.defaults import STAGE_DEFAULTS


@dataclass(frozen=True)
class T2IFlags:
    prompt: tuple[str, ...]
    negative_prompt: tuple[str, ...] | None
    num_images: int
    out: str
    sampling: SamplingFlags
    device: DeviceFlags
    runtime: RuntimeFlags


def settings(args: argparse.Namespace) -> T2IFlags:
    negatives = args.negative_prompt
    return T2IFlags(
        prompt=tuple(args.prompt),
        negative_prompt=None if negatives is None else tuple(negatives),
        num_images=args.num_images,
        out=args.out,
        sampling=from_namespace(SamplingFlags, args),
        device=from_namespace(DeviceFlags, args),
        runtime=from_namespace(RuntimeFlags, args),
    )


def add_parser(commands) -> None:
    t2i = commands.add_parser(
        "t2i",
        help="text → image with an SD1.x / SD2.x / SDXL pipeline folder",
        description="Text → image. Writes OUT/NNNNN.png and OUT/NNNNN.json (every setting and "
        "the library versions) per image; numbering continues after files already in OUT.",
    )
    flag = t2i.add_argument
    add_model_flag(t2i)
    flag(
        "--prompt",
        action="append",
        required=True,
        metavar="TEXT",
        help="the text to draw; repeat the flag for several prompts in one batch",
    )
    flag(
        "--negative-prompt",
        action="append",
        metavar="TEXT",
        help="what to steer away from (classifier-free guidance); once for all prompts or "
        "once per --prompt (default: the empty prompt)",
    )
    steps = STAGE_DEFAULTS["t2i"].steps
    guidance = "7.5 for SD1.x/2.x, 5.0 for SDXL, 8.5 for an LCM folder (embedded in its UNet)"
    add_sampling_flags(t2i, steps=steps, guidance=guidance)
    flag("--num-images", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    add_device_flags(t2i)
    flag(
        "--out",
        default="samples",
        metavar="FOLDER",
        help="where the images and their .json settings go (default samples/)",
    )


def check(flags: T2IFlags) -> None:
    """Every cheap check of the t2i flags, all problems reported at once."""
    problems = sampling_problems(flags.sampling)
    if flags.num_images < 1:
        problems.append(f"--num-images {flags.num_images}: needs at least 1 image per prompt")
    negatives = flags.negative_prompt or ()
    if len(negatives) > 1 and len(negatives) != len(flags.prompt):
        problems.append(
            f"{len(negatives)} --negative-prompt for {len(flags.prompt)} --prompt; give one "
            "for all prompts or one per prompt"
        )
    problems += output_problems("--out", flags.out, folder=True)
    problems += runtime_problems(flags.runtime)
    if problems:
        raise UsageError("\n".join(problems))


def run(flags: T2IFlags, session: Session) -> int:
    import jax

    mesh = build_mesh(flags.device.mesh)
    negatives = flags.negative_prompt or (None,)
    session.progress(f"loading the T2I model {flags.sampling.model}")
    pipe = mv2_jax.load_pipeline(flags.sampling.model, dtype=parse_dtype(flags.device.dtype))
    apply_loras(pipe, flags.sampling.lora, session.progress)
    session.progress("sampling (compiling or restoring the compiled program first)")
    images = pipe(
        list(flags.prompt),
        negative_prompt=list(negatives) if len(negatives) > 1 else negatives[0],
        num_images_per_prompt=flags.num_images,
        **sampling_kwargs(flags.sampling, flags.device, mesh),
    )
    if jax.process_index() == 0:  # every process holds the images; one writes them
        write_t2i(images, flags, session, mesh, getattr(pipe, "default_guidance_scale", None))
    return 0


def write_t2i(images, flags: T2IFlags, session: Session, mesh, default_guidance) -> None:
    """`OUT/NNNNN.png` + `OUT/NNNNN.json` per image, numbered after those already there, then
    say where they went."""
    sampling = flags.sampling
    scheduler_config = Path(sampling.model, "scheduler", "scheduler_config.json")
    shared = {
        "model": str(Path(sampling.model).resolve()),
        "loras": [str(lora) for lora in sampling.lora],
        "prompts": list(flags.prompt),
        "num_images_per_prompt": flags.num_images,
        "seed": sampling.seed,
        "steps": sampling.steps,
        "scheduler": sampling.scheduler,  # None: model_scheduler's
        "model_scheduler": json.loads(scheduler_config.read_text()).get("_class_name")
        if scheduler_config.is_file()
        else None,
        "guidance_scale": default_guidance
        if sampling.guidance_scale is None
        else sampling.guidance_scale,
        "height": int(images.shape[1]),
        "width": int(images.shape[2]),
        "dtype": flags.device.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": command_line(session),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    session.progress(f"writing {flags.out}")
    negatives = flags.negative_prompt or (None,)
    out, first = Path(flags.out), next_index(flags.out)
    paths = []
    for i, pixels in enumerate(to_uint8(images, "images")):
        path = out / f"{first + i:05d}.png"
        Image.fromarray(pixels).save(session.guard.stage(path))
        prompt = i // flags.num_images  # the pipeline orders images prompt by prompt
        sidecar = {
            "image": path.name,
            "prompt": flags.prompt[prompt],
            "negative_prompt": negatives[prompt if len(negatives) > 1 else 0],
            "index_in_batch": i,
            **shared,
        }
        text = json.dumps(sidecar, indent=2, allow_nan=False) + "\n"
        session.guard.stage(path.with_suffix(".json")).write_text(text)
        paths.append(path)
    session.guard.commit()
    for path in paths:
        print(path)
    print(f"wrote {len(paths)} image(s) and their .json settings to {flags.out}")
