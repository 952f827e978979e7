"""A small reward model on VAE latents: the score r(x, c) of an image or clip x given its prompt
c, trained Bradley–Terry on preference pairs (`mv2_jax.training.reward_model`) and read as the
reward of reward-gradient tuning (`mv2_jax.training.reward_gradient`).

Small enough to train on a CPU: a conv trunk on each frame's latents gives appearance features
(spatial mean) and keypoints (spatial soft-argmax, Levine et al. 2016, "End-to-End Training of
Deep Visuomotor Policies", §4.1). Frames are pooled by their mean; the keypoints' per-step
velocities give motion features — mean speed, the spread of the speed over the steps and the
mean acceleration — so that a rater's "uneven motion" (stutter) is something the head can score.
The prompt enters as its mean token embedding, alone and gating the appearance features.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_EPS = 1e-6  # under square roots: keeps the gradient of a still keypoint's speed finite


def spatial_soft_argmax(maps: jax.Array) -> jax.Array:
    """`[N, h, w, K]` → `[N, K, 2]` expected (y, x) in [-1, 1] under each map's softmax."""
    n, h, w, k = maps.shape
    weights = jax.nn.softmax(maps.reshape(n, h * w, k), axis=1).reshape(n, h, w, k)
    ys, xs = jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w)
    y = jnp.einsum("nhwk,h->nk", weights, ys)
    x = jnp.einsum("nhwk,w->nk", weights, xs)
    return jnp.stack([y, x], axis=-1)


def motion_features(keypoints: jax.Array) -> jax.Array:
    """Keypoints `[B, F, K, 2]` → `[B, 3K]`: per keypoint the mean speed over the F − 1 steps,
    the standard deviation of that speed (0 for constant speed: even motion) and the mean
    magnitude of the change of velocity. Zeros for images (F = 1), two of three for F = 2."""
    b, f, k, _ = keypoints.shape
    if f < 2:
        return jnp.zeros((b, 3 * k), keypoints.dtype)
    velocity = jnp.diff(keypoints, axis=1)  # [B, F-1, K, 2]
    speed = jnp.sqrt(jnp.sum(velocity**2, axis=-1) + _EPS)
    spread = jnp.sqrt(jnp.var(speed, axis=1) + _EPS) - jnp.sqrt(_EPS)
    if f > 2:
        change = jnp.sqrt(jnp.sum(jnp.diff(velocity, axis=1) ** 2, axis=-1) + _EPS)
        acceleration = jnp.mean(change, axis=1)
    else:
        acceleration = jnp.zeros((b, k), keypoints.dtype)
    return jnp.concatenate([jnp.mean(speed, axis=1), spread, acceleration], axis=-1)


class RewardHead(nn.Module):
    """`apply(latents [B, F, h, w, c], context [B, L, D]) → rewards [B]` (F = 1: images)."""

    channels: tuple[int, ...] = (32, 64)  # conv trunk, each level halves h and w
    keypoints: int = 8  # soft-argmax maps for the motion features
    hidden: int = 64  # the scoring MLP's width
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latents: jax.Array, context: jax.Array) -> jax.Array:
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        b, f = latents.shape[:2]
        x = latents.reshape(b * f, *latents.shape[2:]).astype(self.dtype)
        for level, width in enumerate(self.channels):
            for j, stride in enumerate((1, 2)):
                x = nn.Conv(
                    width,
                    (3, 3),
                    strides=stride,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"conv_{level}_{j}",
                )(x)
                x = nn.silu(x)
        appearance = jnp.mean(x, axis=(1, 2)).reshape(b, f, -1).mean(axis=1)  # [B, C]
        maps = nn.Conv(
            self.keypoints, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="maps"
        )(x)
        points = spatial_soft_argmax(maps.astype(jnp.float32)).reshape(b, f, self.keypoints, 2)
        text = dense(appearance.shape[-1], "text_proj")(jnp.mean(context, axis=1))
        features = jnp.concatenate(
            [appearance, text, appearance * text, motion_features(points).astype(self.dtype)],
            axis=-1,
        )
        hidden = nn.silu(dense(self.hidden, "hidden")(features))
        return dense(1, "score")(hidden)[:, 0].astype(jnp.float32)
