"""The cascade's models and every stage's settings as flags (`--t2i-model`, `--i2v-steps`, …):
added to a parser, read into a frozen `StageRunFlags`, checked before anything loads, and loaded
into a `TextToVideoCascade`. `sample.py cascade` and `evaluate.py` both take them."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from mv2_jax.commands.common import (
    SCHEDULERS,
    DeviceFlags,
    RuntimeFlags,
    add_device_flags,
    finite_float,
    from_namespace,
    model_folder_problems,
    runtime_problems,
    size_flag_problems,
)
from mv2_jax.commands.i2v import (
    ConditioningFlags,
    add_conditioning_flags,
    component_kwargs,
    conditioning_kwargs,
    conditioning_problems,
)
from mv2_jax.commands.lora_flags import LoraFlag, add_lora_flag, apply_loras, lora_problems
from mv2_jax.commands.video import fps_problems
from mv2_jax.dtypes import parse_dtype
from mv2_jax.pipelines.defaults import STAGE_DEFAULTS
from mv2_jax.pipelines.shipped import (
    SHIPPED_FEW_STEP,
    SHIPPED_SAMPLING,
    shipped_lora,
    shipped_model,
)

SKIPPABLE = ("t2i", "v2v", "vfi")
MODEL_STAGES = ("t2i", "i2v", "v2v", "vfi")
DIFFUSION_STAGES = {stage: STAGE_DEFAULTS[stage].steps for stage in ("t2i", "i2v", "v2v")}
# How the shipped models sample each stage as teachers (`--teachers`), (steps, guidance), where
# the command line leaves it open.
SHIPPED_STAGES = {
    "t2i": (SHIPPED_SAMPLING["t2i_steps"], SHIPPED_SAMPLING["t2i_guidance_scale"]),
    "i2v": (SHIPPED_SAMPLING["i2v_steps"], SHIPPED_SAMPLING["i2v_guidance_scale"]),
    "v2v": (SHIPPED_SAMPLING["v2v_steps"], SHIPPED_SAMPLING["v2v_guidance_scale"]),
}


@dataclass(frozen=True)
class StageFlags:
    """One diffusion stage's `--STAGE-*` flags; None: not given."""

    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    lora: Sequence[LoraFlag] = ()

    @property
    def sets_sampling(self) -> bool:
        """Whether any flag that decides how the stage samples was given."""
        given = (self.steps, self.guidance_scale, self.scheduler)
        return any(v is not None for v in given) or bool(self.lora)


@dataclass(frozen=True)
class StageRunFlags:
    """Every flag of `add_stage_flags`. `models` and `stages` are keyed by stage; with no model
    flag at all they hold the shipped set and its sampling settings (`with_shipped_models`)."""

    models: Mapping[str, str | None]
    stages: Mapping[str, StageFlags]
    skip: tuple[str, ...]
    teachers: bool
    negative_prompt: str | None
    seed: int
    num_frames: int | None
    noise_level: int
    strength: float | None
    vae_tile_size: int | None
    factor: int
    vfi_batch_size: int
    fps: float
    conditioning: ConditioningFlags
    device: DeviceFlags
    runtime: RuntimeFlags

    def skipped(self, key_image: str | None) -> set[str]:
        """The stages left out: `--skip`'s, and T2I when a key image is given."""
        stages = {s.strip() for value in self.skip for s in value.split(",") if s.strip()}
        return stages | {"t2i"} if key_image is not None else stages


def add_stage_flags(parser) -> None:
    """The models and every stage's settings (all flags but the prompt, the key image and the
    outputs)."""
    flag = parser.add_argument
    flag("--negative-prompt", metavar="TEXT", help="what to steer away from (every stage)")
    flag(
        "--t2i-model",
        metavar="FOLDER",
        help="SD1.x / SD2.x / SDXL pipeline folder (T2I); with no model flag at all, the "
        "shipped shapes-world models run every stage (docs/shapes.md)",
    )
    flag("--i2v-model", metavar="FOLDER", help="AnimateDiff or ImageToVideoPipeline folder")
    flag(
        "--v2v-model",
        metavar="FOLDER",
        help="VideoToVideoPipeline folder (default: the I2V model in training-free SDEdit mode)",
    )
    flag("--vfi-model", metavar="FOLDER", help="frame interpolator (default: the shipped one)")
    flag(
        "--skip",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"leave a stage out: {', '.join(SKIPPABLE)} (repeat or comma-separate)",
    )
    flag(
        "--teachers",
        action="store_true",
        help="with the shipped models: sample every stage as its teacher (DDIM, 30 / 25 / 10 "
        "steps, guided T2I and I2V: 120 UNet calls a video) instead of the few-step default "
        "(T2I by DPM-Solver++(2M) in 8 guided steps, the distilled I2V and V2V students by LCM "
        "in 2 and 4: 22 calls). A stage given --STAGE-steps, -guidance-scale, -scheduler or "
        "-lora samples as its teacher anyway",
    )
    flag("--seed", type=int, default=0, metavar="N", help="every stage's seed unless given")
    for stage, steps in DIFFUSION_STAGES.items():
        name = stage.upper()
        shipped_steps, shipped_guidance = SHIPPED_STAGES[stage]
        flag(
            f"--{stage}-steps",
            type=int,
            metavar="N",
            help=f"{name} denoising steps (default {steps}; {shipped_steps} with the shipped "
            "models)",
        )
        flag(
            f"--{stage}-guidance-scale",
            type=finite_float,
            metavar="W",
            help=f"{name} guidance weight (default: the model's; {shipped_guidance} with the "
            "shipped models)",
        )
        flag(f"--{stage}-seed", type=int, metavar="N", help=f"{name} seed (default --seed)")
        flag(
            f"--{stage}-scheduler",
            type=str.lower,
            metavar="NAME",
            help=f"{name} sampling algorithm (as --scheduler)",
        )
        flag(f"--{stage}-size", type=_size, metavar="HxW", help=f"{name} size (default: model's)")
        add_lora_flag(parser, f"--{stage}-lora", f" on the {name} model")
    flag("--num-frames", type=int, metavar="N", help="keyframes (default 32 or the model's max)")
    flag(
        "--noise-level",
        type=int,
        default=20,
        metavar="L",
        help="V2V noise-augmentation level of the low-res input, 0-1000 (default 20)",
    )
    flag("--strength", type=finite_float, metavar="S", help="V2V SDEdit strength in (0, 1]")
    flag(
        "--vae-tile-size",
        type=int,
        metavar="PX",
        help="V2V: VAE encode/decode in overlapping PX² tiles (e.g. 512) to bound memory",
    )
    flag(
        "--factor",
        type=int,
        default=3,
        metavar="K",
        help="VFI: k, frames per keyframe gap; 1 adds none (default 3)",
    )
    flag(
        "--vfi-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="VFI: new frames per batch (default 8)",
    )
    add_conditioning_flags(parser)
    add_device_flags(parser)
    flag(
        "--fps",
        type=finite_float,
        default=24.0,
        help="frame rate of the final video (default 24)",
    )


def _size(text: str) -> tuple[int, int]:
    try:
        height, _, width = text.lower().partition("x")
        return int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW, e.g. 576x576") from None


def stage_run_flags(args: argparse.Namespace) -> StageRunFlags:
    """The frozen settings of `add_stage_flags`'s flags, the shipped set filled in where no
    model is named."""
    flags = from_namespace(
        StageRunFlags,
        args,
        models={"t2i": args.t2i_model, "i2v": args.i2v_model, "v2v": args.v2v_model,
                "vfi": args.vfi_model},
        stages={
            "t2i": StageFlags(args.t2i_steps, args.t2i_guidance_scale, args.t2i_seed,
                              args.t2i_scheduler, args.t2i_size, args.t2i_lora),
            "i2v": StageFlags(args.i2v_steps, args.i2v_guidance_scale, args.i2v_seed,
                              args.i2v_scheduler, args.i2v_size, args.i2v_lora),
            "v2v": StageFlags(args.v2v_steps, args.v2v_guidance_scale, args.v2v_seed,
                              args.v2v_scheduler, args.v2v_size, args.v2v_lora),
        },
        skip=tuple(args.skip),
        conditioning=from_namespace(ConditioningFlags, args),
        device=from_namespace(DeviceFlags, args),
        runtime=from_namespace(RuntimeFlags, args),
    )  # fmt: skip
    return with_shipped_models(flags)


def with_shipped_models(flags: StageRunFlags) -> StageRunFlags:
    """No diffusion model named at all: the shipped shapes-world T2I, I2V and V2V (one set; a
    model of your own for any stage means choosing the others too). A stage whose sampling the
    flags leave open samples the few-step way (`SHIPPED_FEW_STEP`: its scheduler, steps,
    guidance and student LoRA); with `--teachers`, or where a stage's sampling flags are given,
    the teacher's steps and guidance fill what the flags leave open."""
    named = [flags.models[stage] for stage in DIFFUSION_STAGES]
    shipped = {stage: shipped_model(stage) for stage in DIFFUSION_STAGES}
    if any(named) or not any(shipped.values()):
        return flags
    models = dict(flags.models)
    models.update({stage: str(folder) for stage, folder in shipped.items() if folder})
    stages = {}
    for stage, given in flags.stages.items():
        few_step = _few_step(stage) if not (flags.teachers or given.sets_sampling) else None
        if few_step is not None:
            stages[stage] = replace(given, **few_step)
            continue
        steps, guidance = SHIPPED_STAGES[stage]
        stages[stage] = replace(
            given,
            steps=steps if given.steps is None else given.steps,
            guidance_scale=guidance if given.guidance_scale is None else given.guidance_scale,
        )
    return replace(flags, models=models, stages=stages)


def _few_step(stage: str) -> dict | None:
    """`stage`'s few-step `StageFlags` fields, None where this install lacks its student."""
    sampling = SHIPPED_FEW_STEP[stage]
    lora = ()
    if sampling.lora is not None:
        folder = shipped_lora(sampling.lora)
        if folder is None:
            return None
        lora = (LoraFlag(str(folder), sampling.lora_scale),)
    return dict(steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                scheduler=sampling.scheduler, lora=lora)  # fmt: skip


# -------------------------------------------------------------------------------- checks


def sampler_problems(flags: StageFlags, stage: str) -> list[str]:
    """What is wrong with `stage`'s --STAGE-scheduler, --STAGE-steps and --STAGE-size."""
    problems = []
    if flags.scheduler is not None and flags.scheduler not in SCHEDULERS:
        problems.append(f"--{stage}-scheduler {flags.scheduler!r}: choose from {SCHEDULERS}")
    if flags.steps is not None and flags.steps < 1:
        problems.append(f"--{stage}-steps: at least 1")
    if flags.size is not None:
        problems += size_flag_problems(*flags.size, flag=f"--{stage}-size ")
    return problems + lora_problems(flags.lora, f"--{stage}-lora")


def stage_run_problems(flags: StageRunFlags, key_image: str | None) -> list[str]:
    """Every cheap check of `add_stage_flags`'s flags."""
    skip = flags.skipped(key_image)
    problems = [f"--skip {s}: choose from {', '.join(SKIPPABLE)}" for s in sorted(skip)
                if s not in SKIPPABLE]  # fmt: skip
    problems += conditioning_problems(flags.conditioning)
    required = {"t2i": "t2i" not in skip, "i2v": True, "v2v": False}
    for stage, needed in required.items():
        value, flag = flags.models[stage], f"--{stage}-model"
        if value is not None:
            problems += model_folder_problems(value, flag)
        elif needed:
            why = (
                "with a model of your own for another stage, choose this one's too"
                if shipped_model(stage)
                else "this install ships no model for it (mv2_jax/assets)"
            )
            problems.append(f"{flag}: needed; {why}")
    for stage, stage_flags in flags.stages.items():
        problems += sampler_problems(stage_flags, stage)
    if flags.strength is not None and not 0.0 < flags.strength <= 1.0:
        problems.append(f"--strength {flags.strength}: must be in (0, 1]")
    if flags.num_frames is not None and flags.num_frames < 1:
        problems.append(f"--num-frames {flags.num_frames}: needs at least 1 frame")
    if flags.factor < 1:
        problems.append(f"--factor {flags.factor}: must be an integer ≥ 1 (1 adds no frames)")
    if flags.vfi_batch_size < 1:
        problems.append(f"--vfi-batch-size {flags.vfi_batch_size}: needs at least 1")
    tile = flags.vae_tile_size
    if tile is not None and (tile < 32 or tile % 32):
        problems.append(f"--vae-tile-size {tile}: use a multiple of 32, e.g. 512")
    return problems + fps_problems(flags.fps) + runtime_problems(flags.runtime)


# ------------------------------------------------------------------------ loading, running


def stage_settings(flags: StageRunFlags) -> dict:
    """`{stage: StageSettings}` of the per-stage flags."""
    from mv2_jax.pipelines.cascade import StageSettings

    conditioning = conditioning_kwargs(flags.conditioning)
    extra = {
        "t2i": {},
        "i2v": conditioning,
        # the latent noise prior starts I2V from the key image; V2V starts from its input
        "v2v": {
            **{k: v for k, v in conditioning.items() if not k.startswith("noise_prior")},
            "noise_level": flags.noise_level,
            "strength": flags.strength,
            "vae_tile_size": flags.vae_tile_size,
        },
    }
    settings = {}
    for stage, given in flags.stages.items():
        height, width = given.size or (None, None)
        settings[stage] = StageSettings(
            steps=DIFFUSION_STAGES[stage] if given.steps is None else given.steps,
            guidance_scale=given.guidance_scale,
            seed=flags.seed if given.seed is None else given.seed,
            scheduler=given.scheduler,
            height=height,
            width=width,
            extra=extra[stage],
        )
    return settings


def stage_settings_record(settings: Mapping) -> dict:
    """`stage_settings` as JSON-ready dicts."""
    return {stage: {**asdict(v), "extra": dict(v.extra)} for stage, v in settings.items()}


def build_cascade(flags: StageRunFlags, key_image: str | None, report: Callable[[str], None]):
    """The cascade of the flags' model folders, each load announced through `report` (the slow
    part before sampling); the cascade reports its stages there too."""
    import mv2_jax
    from mv2_jax.pipelines.cascade import TextToVideoCascade
    from mv2_jax.pipelines.loading import load_i2v_pipeline, load_v2v_pipeline
    from mv2_jax.pipelines.vfi import load_vfi_pipeline

    skip, dtype = flags.skipped(key_image), parse_dtype(flags.device.dtype)
    parts = component_kwargs(flags.conditioning)
    models = flags.models
    text_to_image = video_to_video = interpolator = None
    shared = {}  # the stages' folders link one VAE and text encoder: read them once
    if "t2i" not in skip:
        report(f"loading the T2I model {models['t2i']}")
        text_to_image = mv2_jax.load_pipeline(models["t2i"], dtype=dtype, shared_components=shared)
        apply_loras(text_to_image, flags.stages["t2i"].lora, report)
    report(f"loading the I2V model {models['i2v']}")
    image_to_video = load_i2v_pipeline(
        models["i2v"], dtype=dtype, shared_components=shared, **parts
    )
    apply_loras(image_to_video, flags.stages["i2v"].lora, report)
    if "v2v" not in skip:
        folder = models["v2v"] or models["i2v"]
        report(f"loading the V2V model {folder}")
        video_to_video = load_v2v_pipeline(folder, dtype=dtype, shared_components=shared, **parts)
        apply_loras(video_to_video, flags.stages["v2v"].lora, report)
    if "vfi" not in skip:
        report(f"loading the frame interpolator {models['vfi'] or '(shipped)'}")
        interpolator = load_vfi_pipeline(models["vfi"], dtype=dtype)
    return TextToVideoCascade(
        image_to_video=image_to_video,
        text_to_image=text_to_image,
        video_to_video=video_to_video,
        interpolator=interpolator,
        report=report,
    )
