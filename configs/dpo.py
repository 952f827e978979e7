"""Diffusion-DPO (Wallace et al. 2023): tune a T2I UNet or an I2V motion UNet on preference pairs
(`python -m mv2_jax.data.build preferences`); the loss and its knobs are in
mv2_jax/training/dpo.py, the methods and results in docs/preferences.md.

    python train.py --config configs/dpo.py:shapes_t2i --workdir runs/dpo-t2i \\
        --config.data.preference_dir=PAIRS
    python train.py --config configs/dpo.py:sd15 --workdir runs/dpo-sd15 \\
        --config.model.pipeline=SD15 --config.data.preference_dir=PICKAPIC

Variants: `shapes_t2i` / `shapes_i2v` (a LoRA on the shipped shapes-world T2I / I2V,
mv2_jax/assets/shapes), `sd15` (the paper's SD1.5 run: full fine-tuning, effective batch 2048,
β = 5000, lr 2.048e-5 = 1e-8 × 2048) and `animatediff` (a motion LoRA on an I2V of
configs/i2v.py:sd15's size: SD1.5 + AnimateDiff motion modules, 576² × 32 frames). The keys of
`dpo` are below; every other key is documented in configs/common.py. The shapes variants'
β, learning rate and length are starting points, not yet tuned (docs/preferences.md).
"""

from __future__ import annotations

import ml_collections

from configs import i2v, t2i
from mv2_jax.pipelines.shipped import SHIPPED

VARIANTS = ("shapes_t2i", "shapes_i2v", "sd15", "animatediff")


def dpo_section(beta: float) -> ml_collections.ConfigDict:
    section = ml_collections.ConfigDict()
    # β of eq. 14 with T·ω(λ_t) folded in: the loss is −log σ(−β/2 · Δ), Δ the policy's minus
    # the reference's chosen-minus-rejected denoising MSE (per-element means). Higher β keeps
    # the model closer to the reference.
    section.beta = beta
    # > 0: add this times the chosen sample's plain denoising MSE (an SFT term that keeps the
    # likelihood of the chosen samples from falling while their margin grows)
    section.sft_weight = 0.0
    return section


def preference_run(config, beta: float) -> ml_collections.ConfigDict:
    """`config` (a t2i / i2v config) as a Diffusion-DPO run: the dpo section, preference data in
    place of its image / video data, and the paper's training settings (no min-SNR weights, no
    caption dropout, constant learning rate after warm-up, no EMA)."""
    config.dpo = dpo_section(beta)
    config.data.preference_dir = ""  # tfds data_dir of `python -m mv2_jax.data.build preferences`
    config.data.image_dir = config.data.video_dir = ""
    config.data.image_ratio = 0.0
    config.diffusion.min_snr_gamma = 0.0
    config.diffusion.caption_dropout = 0.0
    config.lr_schedule = "constant"
    config.ema_decay = 0.0  # the EMA is the params: an export writes what trained
    return config


def shapes_run(stage: str) -> ml_collections.ConfigDict:
    """A LoRA-DPO run (rank 8) on the shipped shapes-world model of `stage` ("t2i", "i2v")."""
    config = preference_run({"t2i": t2i, "i2v": i2v}[stage].get_config("shapes"), beta=5000.0)
    config.model.pipeline = str(SHIPPED[stage])
    config.model.lora.rank = 8  # T2I: attention; I2V: the motion modules (configs/i2v.py)
    config.lr, config.warmup_steps, config.total_steps = 1e-4, 50, 1000
    config.checkpoint_every = 100
    return config


def get_config(variant: str = "shapes_t2i"):
    if variant == "shapes_t2i":
        config = shapes_run("t2i")
        config.model.init = {}
        config.batch_size = 16
    elif variant == "shapes_i2v":
        config = shapes_run("i2v")
        config.model.new_motion_modules = ml_collections.ConfigDict()  # the I2V has its own
        config.i2v.controlnet_from = str(SHIPPED["i2v"] / "controlnet")
        config.batch_size = 4
    elif variant == "sd15":
        config = preference_run(t2i.get_config("sd15"), beta=5000.0)
        # Wallace et al. §5: 2048 pairs a step, lr 1e-8 scaled by the batch, 500 warm-up
        # steps, 2000 steps on Pick-a-Pic v2.
        config.batch_size, config.grad_accum_steps = 2048, 64
        config.lr, config.warmup_steps, config.total_steps = 2.048e-5, 500, 2000
        config.checkpoint_every = 100
    elif variant == "animatediff":
        config = preference_run(i2v.get_config("sd15"), beta=5000.0)
        config.model.lora.rank = 32  # a motion LoRA (configs/i2v.py LORA_TARGETS)
        config.batch_size = 16
        config.lr, config.warmup_steps, config.total_steps = 1e-5, 100, 2000
        config.checkpoint_every = 100
    else:
        raise ValueError(f"configs/dpo.py: unknown variant {variant!r}; choose one of {VARIANTS}")
    return config
