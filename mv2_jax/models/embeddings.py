"""Timestep embeddings: sinusoidal (DDPM/Transformer style), Gaussian Fourier, and the MLP."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.layers import activation, dense


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal embedding `[N] → [N, dim]` (Vaswani et al. 2017, as used by DDPM), in fp32,
    with diffusers' `flip_sin_to_cos` and `downscale_freq_shift` conventions."""
    half = dim // 2
    exponent = (
        -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    )
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :] * scale
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of the (noise level) input; `weight` is a fixed param."""

    embedding_size: int
    flip_sin_to_cos: bool = False
    log: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param(
            "weight",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None,)),
            (self.embedding_size,),
            self.param_dtype,
        )
        x = jnp.log(x) if self.log else x
        proj = x[:, None].astype(jnp.float32) * weight[None, :].astype(jnp.float32) * 2 * jnp.pi
        parts = (
            [jnp.cos(proj), jnp.sin(proj)]
            if self.flip_sin_to_cos
            else [jnp.sin(proj), jnp.cos(proj)]
        )
        return jnp.concatenate(parts, axis=-1)


class TimestepEmbedding(nn.Module):
    """linear_1 → act → linear_2 (→ post_act); `cond_proj` adds an extra condition (LCM's `w`)."""

    time_embed_dim: int
    out_dim: int | None = None
    act_fn: str | None = "silu"
    post_act_fn: str | None = None
    cond_proj_dim: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sample: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.cond_proj_dim is not None:
            # no condition adds exactly zero (no bias), and keeps the param in the tree
            if condition is None:
                condition = jnp.zeros((sample.shape[0], self.cond_proj_dim), sample.dtype)
            sample = sample + dense(sample.shape[-1], use_bias=False, name="cond_proj", **kw)(
                condition
            )
        sample = dense(self.time_embed_dim, name="linear_1", **kw)(sample)
        if self.act_fn is not None:
            sample = activation(self.act_fn)(sample)
        sample = dense(self.out_dim or self.time_embed_dim, name="linear_2", **kw)(sample)
        if self.post_act_fn is not None:
            sample = activation(self.post_act_fn)(sample)
        return sample
