"""`sample.py t2i`: text → image with an SD1.x / SD2.x / SDXL pipeline folder; every image is
written as `OUT/NNNNN.png` with `OUT/NNNNN.json` beside it (settings and library versions)."""

from __future__ import annotations

import argparse
import json
import shlex
from datetime import UTC, datetime
from pathlib import Path

import jax

import mv2_jax
from mv2_jax.commands.common import (
    UsageError,
    add_device_flags,
    add_model_flag,
    add_sampling_flags,
    build_mesh,
    dtype_of,
    sampling_kwargs,
    sampling_problems,
    versions,
)
from mv2_jax.media import save_images


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
    add_sampling_flags(t2i, steps=50, guidance="7.5 for SD1.x/2.x and 5.0 for SDXL")
    flag("--num-images", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    add_device_flags(t2i)
    flag(
        "--out",
        default="samples",
        metavar="FOLDER",
        help="where the images and their .json settings go (default samples/)",
    )


def check(args: argparse.Namespace) -> None:
    """Every cheap check of the t2i flags, all problems reported at once."""
    problems = sampling_problems(args)
    if args.num_images < 1:
        problems.append(f"--num-images {args.num_images}: needs at least 1 image per prompt")
    negatives = args.negative_prompt or []
    if len(negatives) > 1 and len(negatives) != len(args.prompt):
        problems.append(
            f"{len(negatives)} --negative-prompt for {len(args.prompt)} --prompt; give one "
            "for all prompts or one per prompt"
        )
    if Path(args.out).is_file():
        problems.append(f"--out {args.out} is a file; pass a folder (it is created if missing)")
    if problems:
        raise UsageError("\n".join(problems))


def run(args: argparse.Namespace, argv: list[str]) -> int:
    check(args)
    mesh = build_mesh(args.mesh)
    negatives = args.negative_prompt or [None]
    pipe = mv2_jax.load_pipeline(args.model, dtype=dtype_of(args))
    images = pipe(
        args.prompt,
        negative_prompt=negatives if len(negatives) > 1 else negatives[0],
        num_images_per_prompt=args.num_images,
        **sampling_kwargs(args, mesh),
    )
    if jax.process_index() == 0:  # every process holds the images; one writes them
        write_t2i(images, args, argv, mesh, getattr(pipe, "default_guidance_scale", None))
    return 0


def write_t2i(images, args: argparse.Namespace, argv: list[str], mesh, default_guidance) -> None:
    """`OUT/NNNNN.png` + `OUT/NNNNN.json` per image, then say where they went."""
    scheduler_config = Path(args.model, "scheduler", "scheduler_config.json")
    settings = {
        "model": str(Path(args.model).resolve()),
        "prompts": args.prompt,
        "num_images_per_prompt": args.num_images,
        "seed": args.seed,
        "steps": args.steps,
        "scheduler": args.scheduler,  # None: model_scheduler's
        "model_scheduler": json.loads(scheduler_config.read_text()).get("_class_name")
        if scheduler_config.is_file()
        else None,
        "guidance_scale": default_guidance if args.guidance_scale is None else args.guidance_scale,
        "height": int(images.shape[1]),
        "width": int(images.shape[2]),
        "dtype": args.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": shlex.join(["python", "sample.py", *argv]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    negatives = args.negative_prompt or [None]
    paths = save_images(images, args.out)
    for i, path in enumerate(paths):
        prompt = i // args.num_images  # the pipeline orders images prompt by prompt
        sidecar = {
            "image": path.name,
            "prompt": args.prompt[prompt],
            "negative_prompt": negatives[prompt if len(negatives) > 1 else 0],
            "index_in_batch": i,
            **settings,
        }
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(path)
    print(f"wrote {len(paths)} image(s) and their .json settings to {args.out}")
