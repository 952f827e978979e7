"""Latent consistency distillation (issue 22; mv2_jax/training/lcd.py): a LoRA student of a T2I,
I2V or V2V UNet that samples in 2–8 unguided steps with `--scheduler lcm`.

    python train.py --config configs/lcd.py:shapes_t2i --workdir runs/shapes/lcd_t2i
    python -m mv2_jax.training.export --workdir runs/shapes/lcd_t2i --out OUT --lora-only
    python sample.py t2i "a red circle" --model mv2_jax/assets/shapes/t2i --lora OUT \\
        --scheduler lcm --steps 4 --guidance-scale 1

Variants: `tiny_t2i` / `tiny_i2v` (students of random tiny models, for tests: seconds per step),
`shapes_t2i` / `shapes_i2v` / `shapes_v2v` (students of the shipped shapes-world models,
mv2_jax/assets/shapes, on the world's data; each variant's guidance range is centred on the
teacher's shipped guidance). The keys of `lcd` are below; the target network's EMA decay is
the trainer's `ema_decay` (0: the target is the student itself, as LCM-LoRA trains); every
other key is documented in configs/common.py.
"""

from __future__ import annotations

import ml_collections

from configs import i2v, shapes, t2i, v2v
from mv2_jax.pipelines.shipped import SHIPPED, SHIPPED_SAMPLING

VARIANTS = ("tiny_t2i", "tiny_i2v", "shapes_t2i", "shapes_i2v", "shapes_v2v")

# config.model.lora.targets of a student, as LCM-LoRA adapts the UNet: attention, feed-forward,
# the transformers' projections and the resnets' convolutions and time projections
STUDENT_MODULES = ("to_q", "to_k", "to_v", "to_out_0", "ff/net_0_proj", "ff/net_2", "proj_in",
                   "proj_out", "resnets_*/conv1", "resnets_*/conv2", "time_emb_proj")  # fmt: skip
T2I_TARGETS = tuple(f"*/{m}" for m in STUDENT_MODULES)
VIDEO_TARGETS = tuple(f"unet/*/{m}" for m in STUDENT_MODULES)  # the UNet's, not its encoders'


def lcd_section(guidance: tuple[float, float]) -> ml_collections.ConfigDict:
    section = ml_collections.ConfigDict()
    # N: the teacher's DDIM solver steps between points of this grid over the train timesteps
    # (tₙ = (n+1)·T/N − 1); the student samples a subset of it, so keep the LCM scheduler's
    # original_inference_steps (50) equal to N
    section.num_ddim_timesteps = 50
    section.skip_steps = 1  # k: the solver jumps k grid points (k·T/N train timesteps)
    # the teacher's guidance scale (ε_u + w(ε_c − ε_u)) is drawn per example from [min, max]
    # and folded into the target; 1 and 1: no negative branch at all
    section.guidance_scale_min, section.guidance_scale_max = guidance
    section.loss_type = "huber"  # "huber" (pseudo-Huber √(d² + c²) − c) or "l2"
    section.huber_c = 0.001
    # the boundary scalings' s (c_skip, c_out at s·t): the LCM scheduler's timestep_scaling
    section.timestep_scaling = 10.0
    return section


def distillation_run(config, guidance: tuple[float, float], targets) -> ml_collections.ConfigDict:
    """`config` (a t2i / i2v / v2v config) as a consistency distillation run: the lcd section,
    a LoRA student, the target's EMA and the settings the objective assumes."""
    config.lcd = lcd_section(guidance)
    config.model.lora.rank = 16
    config.model.lora.targets = targets
    config.diffusion.min_snr_gamma = 0.0
    config.diffusion.caption_dropout = 0.0  # the teacher's guidance needs the prompt
    config.lr_schedule = "constant"
    config.weight_decay = 0.0
    config.ema_decay = 0.95  # the target network (LCM: μ = 0.95); the export writes the EMA
    return config


def _shipped_guidance(stage: str, spread: float) -> tuple[float, float]:
    centre = SHIPPED_SAMPLING[f"{stage}_guidance_scale"]
    return (max(1.0, centre - spread), centre + spread) if centre > 1 else (1.0, 1.0)


def get_config(variant: str = "tiny_t2i"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/lcd.py: unknown variant {variant!r}; choose one of {VARIANTS}")
    if variant.startswith("tiny"):
        video = variant == "tiny_i2v"
        base = i2v.get_config("tiny") if video else t2i.get_config("tiny")
        config = distillation_run(base, (1.5, 3.0), VIDEO_TARGETS if video else T2I_TARGETS)
        config.model.lora.rank = 4
        config.data.height = config.data.width = 16  # 8² latents: seconds per step
        if video:
            config.data.num_frames = 4
        config.batch_size = 2
        config.lr = 1e-3
        config.warmup_steps = 1
        config.total_steps = 4
        config.checkpoint_every = 2
        config.log_every = 1
        return config

    stage = variant.removeprefix("shapes_")
    base = {"t2i": t2i, "i2v": i2v, "v2v": v2v}[stage].get_config("shapes")
    guidance = _shipped_guidance(stage, 1.0)
    config = distillation_run(base, guidance, T2I_TARGETS if stage == "t2i" else VIDEO_TARGETS)
    config.model.pipeline = str(SHIPPED[stage])
    config.model.init = {}
    config.lr = 1e-4
    config.warmup_steps = 50
    config.total_steps = 2000
    config.checkpoint_every = 250
    config.log_every = 25
    if stage == "t2i":
        config.data.image_dir = ""
        config.data.precomputed_dir = shapes.DATA["t2i_latents"]
        config.batch_size = 16
    else:
        config.model.new_motion_modules = ml_collections.ConfigDict()  # the pipeline has its own
        config.data.image_ratio = 0.0  # clips only: the student distils the video model
        # the teacher as its pipeline samples: the folder's appearance encoder and ControlNet
        # (the V2V stage finds its folder's controlnet/ itself)
        config.i2v.appearance_encoder = config.i2v.controlnet = True
        config.batch_size = 4
        if stage == "i2v":
            config.i2v.controlnet_from = str(SHIPPED[stage] / "controlnet")
            config.data.video_dir = ""
            config.data.precomputed_dir = shapes.DATA["i2v_latents"]
    return config
