"""The denoising loss: noise the clean latents at random timesteps, ask the model for the
configured target (ε, v or x₀), and weight each example's squared error (min-SNR).

Everything takes per-example keys, so an example's noise and timestep depend on its key only,
not on where in the global batch or on which device it sits (the same run on 1 or 8 devices,
with or without gradient accumulation, draws the same numbers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def per_example_noise(keys: jax.Array, shape: tuple[int, ...], offset_noise: float) -> jax.Array:
    """Unit Gaussian noise `[B, *shape]` from one key per example; with `offset_noise` > 0, plus
    that scale of a per-example, per-channel constant shared over frames and pixels (Guttenberg
    2023, "Diffusion with offset noise"), which lets a model learn to change the mean
    brightness of a whole image."""

    def one(key):
        k_noise, k_offset = jax.random.split(key)
        noise = jax.random.normal(k_noise, shape, jnp.float32)
        if offset_noise:
            channels = jax.random.normal(k_offset, (shape[-1],), jnp.float32)
            noise = noise + offset_noise * channels
        return noise

    return jax.vmap(one)(keys)


def per_example_timesteps(keys: jax.Array, num_train_timesteps: int) -> jax.Array:
    """Timesteps `[B]` (int32) uniform in [0, T), one per example key."""
    draw = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_train_timesteps))
    return draw(keys).astype(jnp.int32)


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
    return values.reshape(values.shape + (1,) * (ndim - 1))


def noisy_and_target(
    latents: jax.Array,
    noise: jax.Array,
    timesteps: jax.Array,
    alphas_cumprod: jax.Array,
    prediction_type: str,
) -> tuple[jax.Array, jax.Array]:
    """`x_t = √ᾱ·x₀ + √(1−ᾱ)·ε` (Ho et al. 2020, eq. 4) and the regression target: ε, x₀, or
    the velocity `v = √ᾱ·ε − √(1−ᾱ)·x₀` (Salimans & Ho 2022, §4)."""
    a = _per_example(alphas_cumprod[timesteps], latents.ndim)
    signal, sigma = jnp.sqrt(a), jnp.sqrt(1.0 - a)
    noisy = signal * latents + sigma * noise
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = signal * noise - sigma * latents
    elif prediction_type == "sample":
        target = latents
    else:
        raise ValueError(f"prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    return noisy, target


def snr(alphas_cumprod: jax.Array, timesteps: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ᾱ/(1−ᾱ) of each timestep."""
    a = alphas_cumprod[timesteps]
    return a / (1.0 - a)


def min_snr_weights(
    alphas_cumprod: jax.Array, timesteps: jax.Array, gamma: float, prediction_type: str
) -> jax.Array:
    """Per-example loss weights of Min-SNR-γ (Hang et al. 2023, eq. 9): min(SNR, γ) over what
    the target's error weighs already — SNR for ε, SNR + 1 for v, 1 for x₀. γ ≤ 0: all ones."""
    if gamma <= 0:
        return jnp.ones(timesteps.shape, jnp.float32)
    s = snr(alphas_cumprod, timesteps)
    clipped = jnp.minimum(s, gamma)
    if prediction_type == "epsilon":
        # min(SNR, γ)/SNR written so that SNR = 0 (a zero-terminal-SNR schedule's last step)
        # gives its limit 1, not 0/0.
        return jnp.minimum(gamma / s, 1.0)
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped


def weighted_mse(prediction: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over examples of `weight · mean((prediction − target)²)`, in float32."""
    err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    per_example = err.reshape(err.shape[0], -1).mean(axis=1)
    return jnp.mean(weights * per_example)
