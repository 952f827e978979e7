"""The flags, checks and metadata that `sample.py`'s subcommands share: model / sampling /
device flags, the cheap validation that runs before anything is loaded (problems reported
together as a `UsageError`, exit code 2), the mesh and dtype, and the versions written beside
outputs."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import flax
import jax
import jaxlib

import mv2_jax
from mv2_jax.diffusion.schedulers import SCHEDULERS  # the algorithms --scheduler may name

DTYPES = ("fp32", "bf16")
SINGLE_FILES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class UsageError(Exception):
    """A command-line mistake, reported with its fix; exit code 2."""


# What loading a model or running it raises for bad input (a mismatched checkpoint, a size the
# model cannot take, an unreadable file): reported as `error: ...`, exit code 1.
RUN_ERRORS = (OSError, ValueError, NotImplementedError, TypeError)


def run_reporting_errors(prog: str, run, args: argparse.Namespace, argv: list[str]) -> int:
    """`run(args, argv)`'s exit code, with the errors a user can fix reported in one line each:
    a UsageError as `PROG: error: …` (exit 2), `RUN_ERRORS` as `error: …` (exit 1)."""
    try:
        return run(args, argv)
    except UsageError as e:
        for line in str(e).splitlines():
            print(f"{prog}: error: {line}", file=sys.stderr)
        return 2
    except RUN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def add_model_flag(parser: argparse.ArgumentParser, kind: str = "an SD1.x / SD2.x / SDXL") -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="FOLDER",
        help=f"{kind} pipeline folder holding model_index.json: a diffusers download, or one "
        "written by convert/to_flax.py (single-file checkpoints: convert them first)",
    )


def add_sampling_flags(parser: argparse.ArgumentParser, steps: int, guidance: str) -> None:
    """The denoising flags every sampling subcommand shares."""
    flag = parser.add_argument
    flag(
        "--steps",
        type=int,
        default=steps,
        metavar="N",
        help=f"denoising steps, ≥ 1 (default {steps})",
    )
    flag(
        "--guidance-scale",
        type=float,
        metavar="W",
        help=f"classifier-free guidance weight; ≤ 1 turns guidance off (default: the "
        f"model's, {guidance})",
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


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    flag = parser.add_argument
    flag(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="precision of params and compute (default fp32; bf16 for accelerators)",
    )
    flag(
        "--compilation-cache",
        metavar="DIR",
        default=str(default_compilation_cache()),
        help="keep compiled programs here, so that the next run with the same model and sizes "
        "skips compiling (most of a first run on a CPU); 'none' turns it off "
        "(default: %(default)s)",
    )
    flag(
        "--step-progress",
        action="store_true",
        help="a progress bar over the denoising steps of each run; off by default because a "
        "compiled sampler that reports its steps cannot be kept in the compilation cache "
        "(jax stores no program with host callbacks), so every run would compile it again",
    )
    flag(
        "--mesh",
        metavar="SPEC",
        help="device mesh as axis:size over data, fsdp, tensor, frames, e.g. data:2,fsdp:4; "
        "the sizes multiply to the device count, one may be -1 for the rest (default: no "
        "mesh, jax's default device)",
    )


def default_compilation_cache() -> Path:
    """$XDG_CACHE_HOME/mv2_jax/xla, else ~/.cache/mv2_jax/xla."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mv2_jax" / "xla"


def use_compilation_cache(folder: str | None, min_compile_seconds: float = 0.5) -> None:
    """jax's persistent compilation cache in `folder` (None or 'none': off), for every program
    that took ≥ `min_compile_seconds` to compile. Once per process: jax reads it at the first
    compile."""
    if not folder or folder.lower() == "none":
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)


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


def sampling_problems(args: argparse.Namespace) -> list[str]:
    """The cheap checks of the flags every sampling subcommand shares."""
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
    return problems


def build_mesh(spec: str | None):
    """The device mesh for `--mesh` (None without it); a bad spec is a UsageError."""
    if spec is None:
        return None
    from mv2_jax.parallel import make_mesh  # only with --mesh

    try:
        return make_mesh(spec)
    except ValueError as e:
        raise UsageError(f"--mesh: {e}") from None


def dtype_of(args: argparse.Namespace):
    """The jax dtype of `--dtype`."""
    import jax.numpy as jnp

    return {"fp32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]


def sampling_kwargs(args: argparse.Namespace, mesh) -> dict:
    """The pipeline arguments of the flags every sampling subcommand shares."""
    return dict(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        height=args.height,
        width=args.width,
        seed=args.seed,
        mesh=mesh,
        progress=args.step_progress,
    )


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
