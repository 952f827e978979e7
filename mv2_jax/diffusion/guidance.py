"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) with guidance rescale
(Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
