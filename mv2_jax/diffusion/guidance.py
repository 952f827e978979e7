"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) with guidance rescale
(Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4), and the
guidance-scale embedding that LCM-distilled UNets take instead of a negative branch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mv2_jax.models.embeddings import timestep_embedding


def classifier_free_guidance(
    uncond: jax.Array, cond: jax.Array, scale: jax.Array | float, rescale: jax.Array | float = 0.0
) -> jax.Array:
    """ε̂ = ε_u + s·(ε_c − ε_u); with `rescale` φ > 0 the result's per-sample std is pulled back
    toward ε_c's: ε̂ ← φ·ε̂·σ(ε_c)/σ(ε̂) + (1 − φ)·ε̂ (eq. 15–16), which counters over-exposure
    at high guidance. `scale` and `rescale` may be traced."""
    guided = uncond + scale * (cond - uncond)
    axes = tuple(range(1, guided.ndim))
    # torch.std is unbiased; the ratio is the same either way, ddof=1 keeps the numbers equal
    ratio = jnp.std(cond, axis=axes, keepdims=True, ddof=1) / jnp.std(
        guided, axis=axes, keepdims=True, ddof=1
    )
    rescaled = rescale * guided * ratio + (1 - rescale) * guided
    return jnp.where(jnp.asarray(rescale) > 0, rescaled, guided)


def guidance_scale_embedding(w: jax.Array | float, embedding_dim: int) -> jax.Array:
    """`w[N]` (or a scalar, as `[1]`) → `[N, embedding_dim]` fp32: the UNet's `timestep_cond` for
    a guidance-distilled model (`time_cond_proj_dim = embedding_dim`; LCM, Luo et al. 2023,
    arXiv:2310.04378, §4.2, after VDM's sinusoidal embedding of a scalar).

    It is the sinusoidal timestep embedding of 1000·w: frequencies 10000^(−i/(half−1)),
    sin then cos, a zero column for odd dims, as diffusers' `get_guidance_scale_embedding`.
    LCM's w is the extra weight of CFG written as ε_u + (1 + w)(ε_c − ε_u), so a pipeline with
    `guidance_scale` passes `w = guidance_scale − 1` (diffusers' LCM / SD / SDXL pipelines) and
    runs one unguided UNet call. `w` may be traced."""
    w = jnp.asarray(w, jnp.float32).reshape(-1) * 1000.0
    return timestep_embedding(w, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1.0)
