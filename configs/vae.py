"""The autoencoder (VAE) the latent diffusion stages work in: an `AutoencoderKL` trained from
scratch on the frames of `config.data` (images, or video clips whose frames fold into the
batch), optionally against a PatchGAN discriminator. No pipeline folder.

    python train.py --config configs/vae.py:shapes --workdir runs/shapes/vae
    python -m mv2_jax.training.export --workdir runs/shapes/vae --out runs/shapes/export/vae

Variants: `tiny` (a small model on 16² images, a few steps, for tests) and `shapes` (the VAE of
the shapes world: 64² images of its `image64` dataset (configs/shapes.py) → 16²×4 latents,
0.68 M params, sized for a 2-core CPU). Keys beyond configs/common.py are under `vae`:

- `vae.model`: diffusers `AutoencoderKL` config fields (mv2_jax/models/vae.py), as in its
  `config.json`; `scaling_factor` is not set here: the export measures it.
- `vae.reconstruction_loss`: "l1" (Stable Diffusion's) or "mse". MSE weighs the few large
  errors more: on the shapes world, where the object is ~5–10 % of the pixels, L1 spends its
  first ~600 steps on the background (≈19 dB, the object's colour still wrong; diffusers'
  AutoencoderKL of the same config does the same) while MSE gets the colours (23 dB by
  step 300).
- `vae.kl_weight`: weight of KL(q(z|x) ‖ N(0, I)), summed over an image's latents and divided
  by its pixel values (as Stable Diffusion's LDM configs weigh it against the summed L1: 1e-6).
- `vae.initial_logvar`: the posterior's log-variance at init (the logvar half of
  `quant_conv`'s bias); a fresh encoder's ≈ 0 buries latents of about unit scale in unit
  noise and stalls the reconstruction for hundreds of steps.
- `vae.adv_weight`: weight of the generator's hinge-GAN term; 0 turns the discriminator off
  (no params, no compute).
- `vae.adv_start_step`: the step the GAN term joins the loss (the discriminator trains from
  step 0 whenever adv_weight > 0).
- `vae.discriminator_channels`: PatchGAN channels, one stride-2 4×4 conv each.
- `vae.scale_batches`: batches of the run's data the export encodes to measure the latents'
  std (`scaling_factor` = 1/std).
"""

from __future__ import annotations

import ml_collections

from configs import shapes
from configs.common import base_config


def autoencoder(
    channels, groups: int, sample_size: int, attention: bool = True
) -> ml_collections.ConfigDict:
    """An `AutoencoderKL` config: one block per entry of `channels` (each block but the last
    halves the size), one ResNet per block, 4 latent channels, self-attention in the middle
    blocks unless `attention=False`."""
    n = len(channels)
    return ml_collections.ConfigDict(
        {"block_out_channels": tuple(channels), "layers_per_block": 1, "latent_channels": 4,
         "norm_num_groups": groups, "sample_size": sample_size,
         "mid_block_add_attention": attention,
         "down_block_types": ("DownEncoderBlock2D",) * n,
         "up_block_types": ("UpDecoderBlock2D",) * n}
    )  # fmt: skip


def vae_section() -> ml_collections.ConfigDict:
    v = ml_collections.ConfigDict()
    v.model = autoencoder((16, 32, 64), groups=8, sample_size=64)
    v.reconstruction_loss = "l1"  # "l1" or "mse", of the decoded posterior sample
    v.kl_weight = 1e-6
    v.initial_logvar = -6.0  # the posterior's log-variance at init (std e^-3 ≈ 0.05)
    v.adv_weight = 0.0
    v.adv_start_step = 0
    v.discriminator_channels = (32, 64, 128)
    v.scale_batches = 8
    return v


def get_config(variant: str = "shapes"):
    config = base_config()
    config.stage = "vae"
    config.vae = vae_section()
    config.compute_dtype = "float32"  # a small model on a CPU: bf16 is slower there, and lossy
    config.data.num_frames = 1  # video clips: frames per clip (all fold into the batch)
    config.data.random_crop = True
    config.weight_decay = 0.0
    config.adam_b2 = 0.99
    config.lr_schedule = "cosine"
    config.lr_end_factor = 0.05
    if variant == "tiny":
        # No attention: it would double the step's compile time (the export of attention
        # weights is tested on its own).
        config.vae.model = autoencoder((8, 16), groups=4, sample_size=16, attention=False)
        config.vae.adv_weight = 0.1
        config.vae.adv_start_step = 4
        config.vae.discriminator_channels = (8,)
        config.vae.scale_batches = 2
        config.data.height = config.data.width = 16
        config.data.random_crop = False
        config.batch_size = 4
        config.lr = 3e-3
        config.warmup_steps = 1
        config.lr_schedule = "constant"
        config.total_steps = 10
        config.checkpoint_every = 10
        config.log_every = 3
        config.ema_decay = 0.5
    elif variant == "shapes":
        config.vae.reconstruction_loss = "mse"
        config.data.image_dir = shapes.DATA["image64"]
        config.data.height = config.data.width = 64
        config.batch_size = 8
        config.lr = 2e-3
        config.warmup_steps = 50
        # 2,000 steps: 9.7 min on 2 CPU cores (beside the text encoder), 38.0 dB PSNR (33 by 1,000).
        config.total_steps = 2000
        config.checkpoint_every = 100
        config.log_every = 20
        config.ema_decay = 0.995
    else:
        raise ValueError(f"configs/vae.py: unknown variant {variant!r}; choose tiny or shapes")
    return config
