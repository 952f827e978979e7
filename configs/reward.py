"""Learning from preferences with a reward (issue 21, docs/preferences.md): a reward model
trained Bradley–Terry on preference pairs (`stage = "reward_model"`), and reward-gradient
tuning of the T2I or I2V UNet through its sampler, DRaFT-K / VADER style
(`stage = "reward_gradient"`, a LoRA by default).

    python train.py --config configs/reward.py:shapes --workdir runs/shapes/reward
    python train.py --config configs/reward.py:shapes_t2i_draft --workdir runs/shapes/draft_t2i \\
        --config.reward_gradient.reward_model_dir=runs/shapes/reward
    python train.py --config configs/reward.py:shapes_i2v_draft --workdir runs/shapes/draft_i2v

Variants: `tiny` (the reward model on configs/t2i.py:tiny's random pipeline and synthetic
pairs: a check that it learns, seconds on a CPU), `shapes` (on the shapes world's pairs),
`tiny_t2i_draft` / `tiny_i2v_draft` (reward-gradient tuning of the tiny random models on a
pixel reward, for tests), `shapes_t2i_draft` / `shapes_i2v_draft` (of the shipped shapes
models). Keys beyond configs/common.py are under `reward` and `reward_gradient`, documented in
`reward_sections`.
"""

from __future__ import annotations

import ml_collections

from configs import shapes
from configs.common import base_config
from configs.i2v import LORA_TARGETS as I2V_LORA_TARGETS
from configs.i2v import tiny_model as tiny_video_model
from configs.t2i import LORA_TARGETS as T2I_LORA_TARGETS
from configs.t2i import tiny_model as tiny_image_model

SHIPPED = "mv2_jax/assets/shapes"  # the shipped cascade's pipeline folders
PREFERENCES = f"{shapes.RUNS}/data/preferences"  # python -m mv2_jax.data.build preferences


def reward_sections(config: ml_collections.ConfigDict) -> None:
    """Add the `reward` (model) and `reward_gradient` (tuning) sections to `config`."""
    r = config.reward = ml_collections.ConfigDict()
    r.channels = (32, 64)  # RewardHead conv trunk on the VAE latents (mv2_jax/models/reward_head)
    r.keypoints = 8  # soft-argmax keypoints whose velocities make the motion features
    r.hidden = 64  # width of the scoring MLP
    r.heldout_fraction = 0.1  # prompts whose pairs never train; their accuracy is logged
    r.synthetic_pairs = False  # True: a separable synthetic task instead of config.data

    g = config.reward_gradient = ml_collections.ConfigDict()
    g.base = "t2i"  # the stage whose UNet is tuned: "t2i" or "i2v"
    g.num_inference_steps = 10  # DDIM steps of each training sample
    g.guidance_scale = 1.0  # classifier-free guidance while sampling (> 1: two UNet passes)
    g.grad_steps = 1  # K: gradients flow through the last K steps only (DRaFT-K; 1, 2, 4)
    g.reward = "brightness"  # "model" (a reward_model run) or a pixel reward by name
    g.reward_model_dir = ""  # reward = "model": the workdir of a reward_model run
    g.reward_scale = 1.0  # loss = −reward_scale · mean reward
    g.decode_frames = 0  # > 0: decode a random window of this many frames (VADER); 0: all
    g.load_conditionings = True  # i2v: the pipeline folder's appearance_encoder/
    # i2v: the starting noise shifted toward the key image's latent, as ImageToVideoPipeline's
    # default mean-shift prior (its noise_prior_strength); 0: plain noise
    g.noise_prior_strength = 0.05


def _common(config, stage: str) -> None:
    config.stage = stage
    config.compute_dtype = "float32"  # bf16 matmuls are slower than fp32 on XLA:CPU
    reward_sections(config)


def _reward_model(config, variant: str) -> None:
    _common(config, "reward_model")
    # tfds data_dir of `python -m mv2_jax.data.build preferences` (or data.precomputed_dir)
    config.data.preference_dir = ""
    config.lr_schedule = "constant"
    config.ema_decay = 0.99
    config.grad_clip_norm = 1.0
    if variant == "tiny":
        config.model.init = tiny_image_model()
        config.reward.synthetic_pairs = True
        config.reward.channels = (16, 32)
        config.reward.heldout_fraction = 0.25
        config.data.height = config.data.width = 32
        config.batch_size = 16
        config.lr = 3e-3
        config.warmup_steps = 2
        config.total_steps = 60
        config.checkpoint_every = 60
        config.log_every = 5
    else:  # shapes: the shipped models' VAE and text encoder, the world's preference pairs
        config.model.pipeline = f"{SHIPPED}/i2v"
        config.data.preference_dir = PREFERENCES
        config.data.height = config.data.width = 64
        config.data.num_frames = shapes.FRAMES
        config.batch_size = 32
        config.lr = 1e-3
        config.warmup_steps = 50
        config.total_steps = 2000
        config.checkpoint_every = 250
        config.log_every = 25


def _draft(config, variant: str) -> None:
    _common(config, "reward_gradient")
    g = config.reward_gradient
    video = "i2v" in variant
    g.base = "i2v" if video else "t2i"
    config.model.lora.rank = 4
    config.model.lora.targets = I2V_LORA_TARGETS if video else T2I_LORA_TARGETS
    config.diffusion.caption_dropout = 0.0  # sampling follows the prompt every step
    config.lr_schedule = "constant"
    config.grad_clip_norm = 1.0
    if video:
        config.trainable = ("unet/*motion_modules_*",)
    if variant.startswith("tiny"):
        config.model.init = tiny_video_model() if video else tiny_image_model()
        config.data.height = config.data.width = 16  # 8² latents: seconds per step
        config.data.num_frames = 4 if video else 1
        config.i2v.appearance_encoder = config.i2v.controlnet = False
        g.num_inference_steps = 3
        g.grad_steps = 2
        config.batch_size = 2
        config.lr = 1e-2
        config.warmup_steps = 1
        config.total_steps = 3
        config.checkpoint_every = 3
        config.log_every = 1
        config.ema_decay = 0.0
        return
    # shapes: the shipped models, sampled as the quick start samples them (shipped.py)
    config.data.height = config.data.width = 64
    config.batch_size = 4
    config.lr = 2e-4
    config.warmup_steps = 20
    config.total_steps = 400
    config.checkpoint_every = 50
    config.log_every = 10
    config.ema_decay = 0.0
    g.reward = "model"
    g.reward_model_dir = f"{shapes.RUNS}/reward"
    if video:
        config.model.pipeline = f"{SHIPPED}/i2v"
        config.data.precomputed_dir = shapes.DATA["i2v_latents"]
        config.data.num_frames = shapes.FRAMES
        config.i2v.appearance_encoder = config.i2v.controlnet = True
        config.i2v.controlnet_from = f"{SHIPPED}/i2v/controlnet"
        g.num_inference_steps, g.guidance_scale = 25, 5.0
        g.decode_frames = 4
    else:
        config.model.pipeline = f"{SHIPPED}/t2i"
        config.data.precomputed_dir = shapes.DATA["t2i_latents"]
        config.data.num_frames = 1
        g.num_inference_steps, g.guidance_scale = 30, 2.0


VARIANTS = ("tiny", "shapes", "tiny_t2i_draft", "tiny_i2v_draft")
VARIANTS += ("shapes_t2i_draft", "shapes_i2v_draft")


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/reward.py: unknown variant {variant!r}; choose {VARIANTS}")
    config = base_config()
    if variant in ("tiny", "shapes"):
        _reward_model(config, variant)
    else:
        _draft(config, variant)
    return config
