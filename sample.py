"""Sampling from the command line.

    python sample.py t2i --model FOLDER --prompt "a red fox in snow" --out samples/
    python sample.py "a prompt"         the whole text-to-video cascade (arrives with issue #6)

Every image is written as `OUT/00000.png` with `OUT/00000.json` beside it holding the settings
and library versions that made it. The work lives in the package (`mv2_jax.load_pipeline`,
`mv2_jax.media`); this file reads the command line, checks it, calls the pipeline and writes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import jaxlib

# Run as a script from a checkout: make the package next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mv2_jax
from mv2_jax.diffusion.schedulers import SCHEDULERS  # the algorithms --scheduler may name
from mv2_jax.media import save_images

DTYPES = ("fp32", "bf16")
COMING = {
    "i2v": "image → video: the key image to low-res keyframes (arrives with the I2V issue)",
    "v2v": "video → video: low-res to high-res keyframes (arrives with the V2V issue)",
    "vfi": "frame interpolation between keyframes (arrives with the VFI issue)",
}
CASCADE = (
    'python sample.py "a prompt" runs the whole cascade (T2I → I2V → V2V → VFI → mp4); it '
    "arrives with issue #6"
)
SINGLE_FILES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class UsageError(Exception):
    """A command-line mistake, reported with its fix; exit code 2."""


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sample.py",
        description="Sample from the MagicVideo-V2 stages (JAX/Flax).",
        epilog=f"Without a subcommand: {CASCADE}.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{t2i,i2v,v2v,vfi}")
    t2i = commands.add_parser(
        "t2i",
        help="text → image with an SD1.x / SD2.x / SDXL pipeline folder",
        description="Text → image. Writes OUT/NNNNN.png and OUT/NNNNN.json (every setting and "
        "the library versions) per image; numbering continues after files already in OUT.",
    )
    flag = t2i.add_argument
    flag(
        "--model",
        required=True,
        metavar="FOLDER",
        help="a pipeline folder holding model_index.json: a diffusers download, or one "
        "written by convert/to_flax.py (single-file checkpoints: convert them first)",
    )
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
    flag("--steps", type=int, default=50, metavar="N", help="denoising steps, ≥ 1 (default 50)")
    flag(
        "--guidance-scale",
        type=float,
        metavar="W",
        help="classifier-free guidance weight; ≤ 1 turns guidance off (default: the "
        "model's, 7.5 for SD1.x/2.x and 5.0 for SDXL)",
    )
    flag(
        "--scheduler",
        type=str.lower,
        metavar="NAME",
        help=f"sampling algorithm: {', '.join(SCHEDULERS)}; betas, spacing and prediction "
        "type still come from the model's scheduler_config.json (default: the algorithm "
        "that file names)",
    )
    flag("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    flag("--height", type=int, metavar="PX", help="a multiple of 8 (default: the model's)")
    flag("--width", type=int, metavar="PX", help="a multiple of 8 (default: the model's)")
    flag("--num-images", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    flag(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="precision of params and compute (default fp32; bf16 for accelerators)",
    )
    flag(
        "--mesh",
        metavar="SPEC",
        help="device mesh as axis:size over data, fsdp, tensor, frames, e.g. data:2,fsdp:4; "
        "the sizes multiply to the device count, one may be -1 for the rest (default: no "
        "mesh, jax's default device)",
    )
    flag(
        "--out",
        default="samples",
        metavar="FOLDER",
        help="where the images and their .json settings go (default samples/)",
    )
    for name, text in COMING.items():
        commands.add_parser(name, help=f"{text}; not available yet", description=text)
    return parser


# ---------------------------------------------------------------------------- validation


def check_model_folder(value: str) -> None:
    """A pipeline folder (model_index.json), or a UsageError that says what to pass instead."""
    path = Path(value)
    fix = "pass a pipeline folder holding model_index.json"
    if not path.exists():
        raise UsageError(f"--model {value}: no such folder; {fix}")
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILES:
            raise UsageError(
                f"--model {value} is a single-file checkpoint; convert it first with "
                f"`python convert/to_flax.py {value} --out DIR`, then pass --model DIR"
            )
        raise UsageError(f"--model {value} is a file, not a folder; {fix}")
    if (path / "model_index.json").is_file():
        return
    if (path / "config.json").is_file():
        parent = path.resolve().parent
        above = f" ({parent})" if (parent / "model_index.json").is_file() else ""
        raise UsageError(
            f"--model {value} is a component folder (config.json, no model_index.json); "
            f"pass the pipeline folder above it{above}"
        )
    # A folder one or two levels up from the right one (e.g. a Hugging Face cache entry).
    inside = [*path.glob("*/model_index.json"), *path.glob("*/*/model_index.json")]
    if inside:
        found = sorted(inside)[0].parent
        raise UsageError(f"--model {value} has no model_index.json but {found} has; pass that")
    raise UsageError(f"--model {value} has no model_index.json; {fix}")


def check_t2i(args: argparse.Namespace) -> None:
    """Every cheap check of the t2i flags, all problems reported at once."""
    problems = []
    try:
        check_model_folder(args.model)
    except UsageError as e:
        problems.append(str(e))
    for flag in ("height", "width"):
        size = getattr(args, flag)
        if size is not None and (size < 8 or size % 8):
            below, above = size // 8 * 8, size // 8 * 8 + 8
            near = f"{below} or {above}" if below >= 8 else "8"
            problems.append(f"--{flag} {size} is not a positive multiple of 8; try {near}")
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        problems.append(
            f"--scheduler {args.scheduler!r} is unknown; choose one of {', '.join(SCHEDULERS)}, "
            "or leave it out to use the model's scheduler_config.json"
        )
    if args.steps < 1:
        problems.append(f"--steps {args.steps}: sampling needs at least 1 step")
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


def build_mesh(spec: str | None):
    """The device mesh for `--mesh` (None without it); a bad spec is a UsageError."""
    if spec is None:
        return None
    from mv2_jax.parallel import make_mesh  # only with --mesh

    try:
        return make_mesh(spec)
    except ValueError as e:
        raise UsageError(f"--mesh: {e}") from None


# ---------------------------------------------------------------------------- text → image


def versions() -> dict:
    devices = jax.devices()
    return {
        "mv2_jax": mv2_jax.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "processes": jax.process_count(),
    }


def run_t2i(args: argparse.Namespace, argv: list[str]) -> int:
    check_t2i(args)
    mesh = build_mesh(args.mesh)
    negatives = args.negative_prompt or [None]
    try:
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]
        pipe = mv2_jax.load_pipeline(args.model, dtype=dtype)
        images = pipe(
            args.prompt,
            negative_prompt=negatives if len(negatives) > 1 else negatives[0],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            scheduler=args.scheduler,
            height=args.height,
            width=args.width,
            seed=args.seed,
            mesh=mesh,
            num_images_per_prompt=args.num_images,
            progress=True,
        )
    except (OSError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in ("t2i", *COMING) and not argv[0].startswith("-"):
        print(
            f"sample.py: {CASCADE}; for now make a key image with `sample.py t2i`", file=sys.stderr
        )
        return 2
    if argv[0] in COMING and not {"-h", "--help"} & set(argv):
        print(f"sample.py {argv[0]}: {COMING[argv[0]]}; not available yet", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return run_t2i(args, argv)
    except UsageError as e:
        for line in str(e).splitlines():
            print(f"sample.py t2i: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
