"""Image-to-video (stage 2): animate a key image — an SD UNet with AnimateDiff motion modules,
conditioned on the clip's first frame by an appearance encoder and a SparseCtrl RGB ControlNet.

    python train.py --config configs/i2v.py:tiny --workdir runs/i2v --config.data.video_dir=DATA
    python train.py --config configs/i2v.py:sd15 --workdir runs/i2v-sd15 \\
        --config.model.pipeline=SD15 --config.model.motion_adapter=ANIMATEDIFF_ADAPTER \\
        --config.data.video_dir=DATA

Variants: `tiny` (random init of the small motion UNet below, 32² × 4 frames: seconds per step
on a CPU), `shapes` (the shapes world's: new motion modules on its T2I UNet, 64² × 8 frames;
configs/shapes.py) and `sd15` (MagicVideo-V2's I2V: SD1.5 plus an AnimateDiff v2/v3
MotionAdapter folder, 576² × 32 frames). The motion modules, the appearance encoder and the
ControlNet train; the spatial UNet stays frozen. Every key is documented in configs/common.py.
"""

from __future__ import annotations

from configs import shapes
from configs.common import base_config
from configs.t2i import tiny_model as tiny_image_model

TRAINABLE = ("unet/*motion_modules_*", "appearance/*", "controlnet/*")
# config.model.lora.targets: the motion modules' attention projections (a motion LoRA)
LORA_TARGETS = tuple(f"unet/*motion_modules_*/{p}" for p in ("to_q", "to_k", "to_v", "to_out_0"))


def tiny_model() -> dict:
    """configs/t2i.py:tiny's pipeline with its UNet turned into a motion UNet (one motion module
    per layer, 4 heads, at most 8 frames)."""
    model = tiny_image_model()
    model["unet"] = {
        "_class_name": "UNetMotionModel",
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlockMotion", "DownBlockMotion"],
        "up_block_types": ["UpBlockMotion", "CrossAttnUpBlockMotion"],
        "cross_attention_dim": 32,
        "num_attention_heads": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 16,
        "motion_num_attention_heads": 4,
        "motion_max_seq_length": 8,
    }
    return model


def get_config(variant: str = "tiny"):
    config = base_config()
    config.stage = "i2v"
    config.trainable = TRAINABLE
    config.model.lora.targets = LORA_TARGETS
    config.i2v.appearance_encoder = True
    config.i2v.controlnet = True
    if variant == "tiny":
        config.model.init = tiny_model()
        config.data.height = config.data.width = 32
        config.data.num_frames = 4
        config.batch_size = 4
        config.lr = 1e-3
        config.warmup_steps = 10
        config.total_steps = 200
        config.checkpoint_every = 50
        config.ema_decay = 0.99
        config.compute_dtype = "float32"
    elif variant == "shapes":  # the shipped shapes-world model (configs/shapes.py)
        config.model.pipeline = shapes.T2I
        config.model.new_motion_modules = shapes.MOTION_MODULES
        # Motion modules do not read the text; the direction reaches them through the
        # features the text's cross-attention makes, so that trains too, kept an image
        # model by image steps (joint image+video training on the T2I run's latents).
        config.trainable = (*TRAINABLE, "unet/*attn2*")
        config.data.video_dir = shapes.DATA["video128"]
        config.data.height = config.data.width = 64
        config.data.num_frames = shapes.FRAMES
        config.data.image_ratio = 0.2
        config.batch_size = 4
        config.lr = 2e-4
        config.warmup_steps = 100
        config.total_steps = 4000
        config.checkpoint_every = 250
        config.log_every = 25
        config.ema_decay = 0.999
        config.compute_dtype = "float32"
        config.diffusion.min_snr_gamma = shapes.MIN_SNR_GAMMA
    elif variant == "sd15":
        # MagicVideo-V2 §3: about 600² × 32 keyframes; 576 = 9·64 keeps the UNet's 3 halvings
        # of the 72² latent whole.
        config.data.height = config.data.width = 576
        config.data.num_frames = 32
        config.data.target_fps = 8.0
        config.batch_size = 16
        config.lr = 1e-4  # AnimateDiff's motion-module rate
        config.warmup_steps = 500
        config.total_steps = 20_000
        config.checkpoint_every = 500
        config.remat_policy = "full"
        config.mesh = "fsdp:-1"
    else:
        raise ValueError(
            f"configs/i2v.py: unknown variant {variant!r}; choose tiny, shapes or sd15"
        )
    return config
