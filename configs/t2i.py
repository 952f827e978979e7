"""Text-to-image (stage 1): fine-tune an SD1.x / SDXL UNet, or train a small one from scratch.

    python train.py --config configs/t2i.py:tiny  --workdir runs/tiny  --config.data.image_dir=DATA
    python train.py --config configs/t2i.py:sd15  --workdir runs/sd15  --config.model.pipeline=SD15
    python train.py --config configs/t2i.py:sdxl  --workdir runs/sdxl  --config.model.pipeline=SDXL

Variants: `tiny` (random init of the small model below: seconds per step on a CPU), `shapes`
(the shapes world's shipped model, configs/shapes.py and docs/shapes.md), `sd15`
(512², from a diffusers or converted SD1.5 folder), `sdxl` (1024², SDXL base folder). Every key
is documented in configs/common.py.
"""

from __future__ import annotations

from configs import shapes
from configs.common import base_config


def tiny_model() -> dict:
    """A ~1M-param SD-shaped pipeline (UNet, VAE ×2, 2-layer CLIP) with a character tokenizer."""
    return {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 16,
        },
        "vae": {
            "_class_name": "AutoencoderKL",
            "block_out_channels": [16, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "sample_size": 32,
        },
        "text_encoder": {
            "architectures": ["CLIPTextModel"],
            "vocab_size": 138,  # mv2_jax.training.random_pipeline.char_vocab_size()
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        "scheduler": {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon",
            "steps_offset": 1,
            "clip_sample": False,
        },
    }


# config.model.lora.targets: the attention projections of the UNet
LORA_TARGETS = ("*/to_q", "*/to_k", "*/to_v", "*/to_out_0")


def get_config(variant: str = "tiny"):
    config = base_config()
    config.stage = "t2i"
    config.model.lora.targets = LORA_TARGETS
    config.data.num_frames = 1
    if variant == "tiny":
        config.model.init = tiny_model()
        config.data.height = config.data.width = 32
        config.batch_size = 8
        config.lr = 1e-3
        config.warmup_steps = 10
        config.total_steps = 200
        config.checkpoint_every = 50
        config.ema_decay = 0.99
        config.compute_dtype = "float32"
    elif variant == "shapes":  # the shipped shapes-world model (configs/shapes.py)
        config.model.init = shapes.text_to_image_model()
        config.data.image_dir = shapes.DATA["image64"]
        config.data.height = config.data.width = 64
        # ≈1.5 s per step of 32 on the 2 cores with the VAE in the loop; 0.45 s per step of 16
        # on precomputed latents (docs/shapes.md). 3,000 steps left squares rounded: 9,000.
        config.batch_size = 16
        config.lr = 5e-4
        config.warmup_steps = 100
        config.total_steps = 9000
        config.checkpoint_every = 250
        config.log_every = 25
        config.ema_decay = 0.999
        config.compute_dtype = "float32"  # bf16 matmuls are slower than fp32 on XLA:CPU
        config.diffusion.min_snr_gamma = shapes.MIN_SNR_GAMMA
    elif variant == "sd15":
        config.data.height = config.data.width = 512
        config.batch_size = 32
        config.lr = 1e-5
        config.warmup_steps = 500
        config.total_steps = 20_000
        config.remat_policy = "dots_no_batch"
        config.mesh = "fsdp:-1"
    elif variant == "sdxl":
        config.data.height = config.data.width = 1024
        config.batch_size = 32
        config.lr = 4e-6
        config.warmup_steps = 500
        config.total_steps = 20_000
        config.remat_policy = "full"
        config.mesh = "fsdp:-1"
    else:
        raise ValueError(
            f"configs/t2i.py: unknown variant {variant!r}; choose tiny, shapes, sd15 or sdxl"
        )
    return config
