"""Video-to-video super-resolution (stage 3): the I2V backbone (same spatial layers, its own motion
modules) denoises a clip at the target resolution given the same clip at a lower one, whose
latents — upsampled and noise-augmented — join the noisy latents at conv_in.

    python train.py --config configs/v2v.py:tiny --workdir runs/v2v --config.data.video_dir=DATA
    python train.py --config configs/v2v.py:sd15 --workdir runs/v2v-sd15 \\
        --config.model.pipeline=models/i2v --config.data.video_dir=DATA

Variants: `tiny` (a random tiny I2V model, converted: 64² targets from 32² inputs × 4 frames,
seconds per step on a CPU) and `sd15` (MagicVideo-V2's V2V: from an exported I2V run or an
AnimateDiff folder, ≈600² → ≈1048² as 576² → 1024², 32 frames); `shapes` (the shapes world's:
64² → 128² × 8 frames from its I2V model; configs/shapes.py). The motion modules, conv_in
(its new low-res channels), the noise-level embedding and the I2V conditionings train; the
spatial layers stay frozen. Every key is documented in configs/common.py.
"""

from __future__ import annotations

from configs import shapes
from configs.common import base_config
from configs.i2v import tiny_model as tiny_i2v_model

TRAINABLE = (
    "unet/*motion_modules_*",
    "unet/conv_in/*",
    "unet/class_embedding/*",
    "appearance/*",
    "controlnet/*",
)


# config.model.lora.targets: every attention projection of the UNet (spatial and motion)
LORA_TARGETS = tuple(f"unet/*/{p}" for p in ("to_q", "to_k", "to_v", "to_out_0"))


def get_config(variant: str = "tiny"):
    config = base_config()
    config.stage = "v2v"
    config.trainable = TRAINABLE
    config.model.lora.targets = LORA_TARGETS
    config.i2v.appearance_encoder = True
    config.i2v.controlnet = True
    if variant == "tiny":
        config.model.init = tiny_i2v_model()  # converted to V2V on load
        config.data.height = config.data.width = 64
        config.v2v.scale = 2.0  # from 32²
        config.data.num_frames = 4
        config.batch_size = 4
        config.lr = 1e-3
        config.warmup_steps = 10
        config.total_steps = 200
        config.checkpoint_every = 50
        config.ema_decay = 0.99
        config.compute_dtype = "float32"
    elif variant == "shapes":  # the shipped shapes-world model (configs/shapes.py)
        config.model.pipeline = shapes.I2V
        # the low-res clip carries the key image's appearance: no reference conditionings
        config.i2v.appearance_encoder = config.i2v.controlnet = False
        config.data.video_dir = shapes.DATA["video128"]
        # Trained on random 64² patches of the 128² clips at full resolution (their 32²
        # downscale as input: the pixel density of the I2V stage's 64² frames), sampled on
        # whole 128² frames — a quarter of the cost of whole-frame steps, as SR models train.
        config.data.height = config.data.width = 64
        config.data.scale_to = 128
        config.data.random_crop = True
        config.v2v.scale = 2.0
        config.data.num_frames = shapes.FRAMES
        config.batch_size = 4
        config.lr = 2e-4
        config.warmup_steps = 100
        config.total_steps = 2000
        config.checkpoint_every = 250
        config.log_every = 25
        config.ema_decay = 0.999
        config.compute_dtype = "float32"
        config.diffusion.min_snr_gamma = shapes.MIN_SNR_GAMMA
    elif variant == "sd15":
        # MagicVideo-V2 §3: ≈600² keyframes up to ≈1048²; multiples of 64 keep the UNet's three
        # halvings whole: 576² inputs (the I2V stage's size) → 1024² targets.
        config.data.height = config.data.width = 1024
        config.v2v.scale = 1024 / 576
        config.data.num_frames = 32
        config.data.target_fps = 8.0
        config.batch_size = 16
        config.lr = 1e-4
        config.warmup_steps = 500
        config.total_steps = 20_000
        config.checkpoint_every = 500
        config.remat_policy = "full"
        config.mesh = "fsdp:-1"
    else:
        raise ValueError(
            f"configs/v2v.py: unknown variant {variant!r}; choose tiny, shapes or sd15"
        )
    return config
