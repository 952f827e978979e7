"""The flags, checks and metadata that `sample.py`'s subcommands share: a parser whose errors are
one line, model / sampling / device / runtime flags and the frozen settings they become, the
cheap validation that runs before anything is loaded (problems reported together as a
`UsageError`, exit code 2), the mesh, and the versions written beside outputs."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import mv2_jax
from mv2_jax.commands.finite import finite_float
from mv2_jax.commands.lora_flags import LoraFlag, add_lora_flag, lora_problems
from mv2_jax.diffusion.scheduler_names import SCHEDULER_NAMES as SCHEDULERS  # no jax yet
from mv2_jax.dtypes import DTYPE_CHOICES
from mv2_jax.pipelines.defaults import GUIDANCE_BATCHING, size_problems

SINGLE_FILES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
LATENT_MULTIPLE = 8  # the VAE factor of every model these commands load; the plan checks the rest
Flags = TypeVar("Flags")


class UsageError(Exception):
    """A command-line mistake, reported with its fix; exit code 2."""


# What loading a model or running it raises for bad input (a mismatched checkpoint, a size the
# model cannot take, an unreadable file): reported as `error: ...`, exit code 1.
RUN_ERRORS = (OSError, ValueError, NotImplementedError, TypeError)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `PROG: error: …`, exit code 2; an unknown flag names
    the nearest known one."""

    def parse_args(self, args=None, namespace=None):
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            reporter = chosen_subcommand(self, namespace) or self
            reporter.error(unknown_flags_message(unknown, option_strings(self, namespace)))
        return namespace

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists every flag)\n")


def chosen_subcommand(parser: argparse.ArgumentParser, namespace: argparse.Namespace):
    """The subcommand's parser that `namespace` chose, None without subcommands."""
    for action in parser._actions:  # argparse keeps its actions here; there is no public view
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(namespace, action.dest, None) or "")
    return None


def option_strings(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> list[str]:
    """Every `--flag` of `parser` and of the subcommand `namespace` chose."""
    options = [o for action in parser._actions for o in action.option_strings]
    chosen = chosen_subcommand(parser, namespace)
    if chosen is not None:
        options += option_strings(chosen, namespace)
    return [o for o in options if o.startswith("--")]


def unknown_flags_message(unknown: list[str], options: list[str]) -> str:
    """`unrecognized arguments` as one line, with the nearest known flag of the first."""
    first = unknown[0].split("=", 1)[0]
    near = difflib.get_close_matches(first, options, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near and first.startswith("-") else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


def from_namespace(cls: type[Flags], args: argparse.Namespace, **given) -> Flags:
    """`cls` (a dataclass) with each field from `given`, else the flag of that name."""
    return cls(**{f.name: given[f.name] if f.name in given else getattr(args, f.name)
                  for f in fields(cls)})  # fmt: skip


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SamplingFlags:
    """`--model` and the denoising flags every sampling subcommand shares."""

    model: str
    steps: int
    guidance_scale: float | None
    scheduler: str | None
    seed: int
    height: int | None
    width: int | None
    lora: Sequence[LoraFlag] = ()


@dataclass(frozen=True)
class DeviceFlags:
    """Precision, mesh, step bars and how the guided halves run."""

    dtype: str
    mesh: str | None
    step_progress: bool
    guidance_batching: str = "auto"


@dataclass(frozen=True)
class RuntimeFlags:
    """What every command does around the run: the compilation cache and the timings."""

    compilation_cache: str
    timings: bool


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
        type=finite_float,
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
    add_lora_flag(parser)


def add_dtype_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype",
        type=str.lower,
        choices=DTYPE_CHOICES,
        default="fp32",
        help="precision of params and compute (default fp32; bf16 for accelerators)",
    )


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--dtype, --step-progress, --mesh, --guidance-batching, and the runtime flags."""
    add_dtype_flag(parser)
    flag = parser.add_argument
    flag(
        "--guidance-batching",
        type=str.lower,
        choices=GUIDANCE_BATCHING,
        default="auto",
        help="how each guided denoising step runs its unconditional and conditional halves: "
        "batched (one UNet call of twice the batch, fastest), sequential (two calls one after "
        "the other: about half the activation memory, the same numbers, slower), or auto "
        "(sequential for a stage whose batched program, compiled, needs more than the "
        "device's memory; batched on CPU) (default: auto)",
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
    add_runtime_flags(parser)


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    flag = parser.add_argument
    flag(
        "--compilation-cache",
        metavar="DIR",
        default=str(default_compilation_cache()),
        help="keep compiled programs here, so that the next run with the same model and sizes "
        "skips compiling (most of a first run on a CPU); 'none' turns it off "
        "(default: %(default)s)",
    )
    flag(
        "--timings",
        action="store_true",
        help="at the end, seconds per phase on stderr (imports, loading each model, compiling "
        "or restoring compiled programs, each stage, writing); benchmarks/first_run.py reads it",
    )


def default_compilation_cache() -> Path:
    """$XDG_CACHE_HOME/mv2_jax/xla, else ~/.cache/mv2_jax/xla."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mv2_jax" / "xla"


def use_compilation_cache(folder: str | None, min_compile_seconds: float = 0.0) -> None:
    """jax's persistent compilation cache in `folder` (None or 'none': off), for every program
    that took ≥ `min_compile_seconds` to compile. Once per process: jax reads it at the first
    compile. Every program by default: a run makes dozens of small ones (each LoRA param's
    merge, the interpolator's stages; 10–50 ms of XLA each) and reading them back is cheaper
    (the shipped I2V LoRA's load: 0.9 → 0.3 s warm, benchmarks/first_run.py)."""
    import jax

    if not folder or folder.lower() == "none":
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)


@contextlib.contextmanager
def program_caches(folder: str | None) -> Iterator[None]:
    """For the duration of a command: the pipelines' exported programs in `folder/exported/`
    (so that a warm run neither traces nor lowers them; `ProgramStore`) and the models' param
    shapes in `folder/param_shapes/` (`shape_cache`), beside the compilation cache; put back as
    they were afterwards (a command run in-process leaves no setting behind)."""
    from mv2_jax.pipelines import program_store
    from mv2_jax.weights import shape_cache

    if not folder or folder.lower() == "none":
        yield
        return
    previous = program_store.default_program_store(), shape_cache.current_folder()
    program_store.use_program_store(Path(folder) / "exported")
    shape_cache.use_shape_cache(Path(folder) / "param_shapes")
    try:
        yield
    finally:
        store, shapes = previous
        program_store.use_program_store(None if store is None else store.folder)
        shape_cache.use_shape_cache(shapes)


# -------------------------------------------------------------------------------- checks


def check_model_folder(value: str, flag: str = "--model") -> None:
    """A pipeline folder (model_index.json), or a UsageError that says what to pass instead."""
    path = Path(value)
    fix = "pass a pipeline folder holding model_index.json"
    if not path.exists():
        raise UsageError(f"{flag} {value}: no such folder; {fix}")
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILES:
            raise UsageError(
                f"{flag} {value} is a single-file checkpoint; convert it first with "
                f"`python convert/to_flax.py {value} --out DIR`, then pass {flag} DIR"
            )
        raise UsageError(f"{flag} {value} is a file, not a folder; {fix}")
    if (path / "model_index.json").is_file():
        return
    if (path / "config.json").is_file():
        parent = path.resolve().parent
        above = f" ({parent})" if (parent / "model_index.json").is_file() else ""
        raise UsageError(
            f"{flag} {value} is a component folder (config.json, no model_index.json); "
            f"pass the pipeline folder above it{above}"
        )
    # A folder one or two levels up from the right one (e.g. a Hugging Face cache entry).
    inside = [*path.glob("*/model_index.json"), *path.glob("*/*/model_index.json")]
    if inside:
        found = sorted(inside)[0].parent
        raise UsageError(f"{flag} {value} has no model_index.json but {found} has; pass that")
    raise UsageError(f"{flag} {value} has no model_index.json; {fix}")


def model_folder_problems(value: str, flag: str = "--model") -> list[str]:
    try:
        check_model_folder(value, flag)
    except UsageError as e:
        return [str(e)]
    return []


def size_flag_problems(height: int | None, width: int | None, flag: str = "--") -> list[str]:
    """--height/--width (or one stage's size) that the latent-size rule refuses; None: the
    model's, checked by the pipeline."""
    given = [8 if v is None else v for v in (height, width)]
    return size_problems(*given, LATENT_MULTIPLE, where=flag)


def sampling_problems(flags: SamplingFlags) -> list[str]:
    """The cheap checks of the flags every sampling subcommand shares."""
    problems = model_folder_problems(flags.model)
    problems += size_flag_problems(flags.height, flags.width)
    if flags.scheduler is not None and flags.scheduler not in SCHEDULERS:
        problems.append(
            f"--scheduler {flags.scheduler!r} is unknown; choose one of "
            f"{', '.join(SCHEDULERS)}, or leave it out to use the model's scheduler_config.json"
        )
    if flags.steps < 1:
        problems.append(f"--steps {flags.steps}: sampling needs at least 1 step")
    return problems + lora_problems(flags.lora)


def output_problems(flag: str, value: str, *, folder: bool) -> list[str]:
    """Where an output goes: its parent must be (or become) a writable folder, and the path
    must not exist as the other kind (a folder where a file goes, or the reverse)."""
    path = Path(value)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        return [f"{flag} {value}: {parent} is a file, not a folder"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{flag} {value}: cannot write in {parent}"]
    if folder and path.exists() and not path.is_dir():
        return [f"{flag} {value} is a file; pass a folder (it is created if missing)"]
    if not folder and path.is_dir():
        return [f"{flag} {value} is a folder; pass a file name"]
    return []


def runtime_problems(flags: RuntimeFlags) -> list[str]:
    cache = flags.compilation_cache
    if cache.lower() == "none":
        return []
    return output_problems("--compilation-cache", cache, folder=True)


def build_mesh(spec: str | None):
    """The device mesh for `--mesh` (None without it); a bad spec is a UsageError."""
    if spec is None:
        return None
    from mv2_jax.parallel import make_mesh  # only with --mesh

    try:
        return make_mesh(spec)
    except ValueError as e:
        raise UsageError(f"--mesh: {e}") from None


def sampling_kwargs(flags: SamplingFlags, device: DeviceFlags, mesh) -> dict:
    """The pipeline arguments of the flags every sampling subcommand shares."""
    return dict(
        num_inference_steps=flags.steps,
        guidance_scale=flags.guidance_scale,
        scheduler=flags.scheduler,
        height=flags.height,
        width=flags.width,
        seed=flags.seed,
        mesh=mesh,
        progress=device.step_progress,
        guidance_batching=device.guidance_batching,
    )


def versions() -> dict:
    import flax
    import jax
    import jaxlib

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


def say(line: str) -> None:
    """A line on stderr, where progress goes (stdout holds what was written)."""
    print(line, file=sys.stderr, flush=True)
