"""The low-res conditioning of video super-resolution (V2V), in one place for the pipeline and the
trainer: low-res latents upsampled to the target latent size, then noise-augmented at an integer
level that the UNet sees as `class_labels` (the SD x4 upscaler's `noise_level`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.schedules import alphas_cumprod, make_betas

# The SD x4 upscaler's defaults: levels drawn from [0, 350] in training, 1000 table entries.
MAX_NOISE_LEVEL = 350
NUM_NOISE_LEVELS = 1000


@functools.cache
def noise_level_alphas_cumprod(num_levels: int = NUM_NOISE_LEVELS) -> np.ndarray:
    """ᾱ `[num_levels]` of the augmentation: the SD x4 upscaler's `low_res_scheduler` (DDPM,
    β linear in √β from 1e-4 to 0.02), fixed whatever the denoiser's scheduler is, so a
    level means the same noise in training and sampling."""
    return alphas_cumprod(make_betas("scaled_linear", 1e-4, 0.02, num_levels))


def upsample_latents(latents: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of latents `[B,F,h,w,C]` (or images `[B,h,w,C]`) to `size = (H', W')`,
    keeping the dtype."""
    height, width = size
    shape = (*latents.shape[:-3], height, width, latents.shape[-1])
    if tuple(latents.shape) == shape:
        return latents
    return jax.image.resize(latents, shape, "linear").astype(latents.dtype)


def noise_augment(
    latents: jax.Array,
    noise_level: jax.Array,
    noise: jax.Array,
    alphas_cumprod: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """`√ᾱ·x + √(1−ᾱ)·ε` at DDPM step `noise_level[B]` (int) of `alphas_cumprod` (default
    `noise_level_alphas_cumprod()`): the q-sample the x4 upscaler's `low_res_scheduler.add_noise`
    applies. `latents`, `noise`: `[B, ...]`; level 0 keeps almost all of the signal."""
    if alphas_cumprod is None:
        alphas_cumprod = noise_level_alphas_cumprod()
    levels = jnp.broadcast_to(jnp.asarray(noise_level, jnp.int32).reshape(-1), latents.shape[:1])
    # (Ho et al. 2020, eq. 4; not training.losses' copy, so that sampling needs no training deps)
    a = jnp.asarray(alphas_cumprod, jnp.float32)[levels].reshape(-1, *(1,) * (latents.ndim - 1))
    noisy = jnp.sqrt(a) * latents.astype(jnp.float32) + jnp.sqrt(1 - a) * noise.astype(jnp.float32)
    return noisy.astype(latents.dtype)
