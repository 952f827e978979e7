"""Latent noise priors for image-to-video: start the sampler from noise that already carries the
key image's layout, so the first frames keep its composition (MagicVideo-V2, Wang et al. 2024,
§2.2 "latent noise prior").

Two forms, both returning unit-scale initial latents `[B, F, h, w, C]` that a pipeline takes as
`latents=` (it multiplies them by the scheduler's initial sigma, as for plain noise):

- `mean_shift_prior`: z_T = √a · z_ref + √(1 − a) · ε, every frame shifted towards the
  reference latent with strength a ∈ [0, 1] (a = 0: plain noise). The variance stays ≈ 1 when
  z_ref has unit scale (the VAE's scaled latents do), so the sampler's noise level is kept.
- `frequency_prior`: the low spatio-temporal frequencies of the *noised* reference
  (√ᾱ_T · z_ref + √(1 − ᾱ_T) · ε′, the forward process at the first sampling step) with the
  high frequencies of fresh noise ε, joined in the 3-D Fourier domain over (frames, height,
  width) by a Gaussian low-pass filter — layout-guided noise initialisation (Ren et al. 2024,
  ConsistI2V, §3.3), after FreeInit's frequency filter (Wu et al. 2023, eq. 5–6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_shift_prior(
    reference: jax.Array, noise: jax.Array, strength: float | jax.Array
) -> jax.Array:
    """`reference [B, h, w, C]` (scaled VAE latents of the key image), `noise [B, F, h, w, C]`
    unit Gaussian → `√a·reference + √(1−a)·noise` for every frame. `strength` may be traced
    (then the caller checks its range)."""
    if isinstance(strength, int | float) and not 0.0 <= strength <= 1.0:
        raise ValueError(f"noise prior strength must be in [0, 1], got {strength}")
    return jnp.sqrt(strength) * reference[:, None] + jnp.sqrt(1.0 - strength) * noise


def gaussian_low_pass(
    frames: int, height: int, width: int, spatial_cutoff: float, temporal_cutoff: float
) -> jax.Array:
    """`[F, h, w, 1]` weights exp(−½ · ((f_t/d_t)² + (f_y/d_s)² + (f_x/d_s)²)) over the FFT's
    frequencies (cycles per sample, in [−½, ½)); a cutoff of 0 keeps only the mean along that
    axis."""

    def axis(n: int, cutoff: float) -> jax.Array:
        f = jnp.fft.fftfreq(n)
        return jnp.where(f == 0, 0.0, jnp.inf) if cutoff == 0 else (f / cutoff) ** 2

    t = axis(frames, temporal_cutoff)[:, None, None]
    y = axis(height, spatial_cutoff)[None, :, None]
    x = axis(width, spatial_cutoff)[None, None, :]
    return jnp.exp(-0.5 * (t + y + x))[..., None]


def frequency_prior(
    reference: jax.Array,
    noise: jax.Array,
    reference_noise: jax.Array,
    alpha_cumprod_start: float | jax.Array,
    spatial_cutoff: float = 0.25,
    temporal_cutoff: float = 0.25,
) -> jax.Array:
    """Low frequencies of the reference noised to ᾱ_T (`alpha_cumprod_start`, the schedule's ᾱ
    at the first sampling timestep) with `reference_noise`, high frequencies of `noise`.

    `reference [B, h, w, C]`, `noise` / `reference_noise [B, F, h, w, C]` → `[B, F, h, w, C]`.
    Cutoffs are in cycles per sample (½ = Nyquist): larger keeps more of the reference."""
    _, f, h, w, _ = noise.shape
    a = jnp.asarray(alpha_cumprod_start, jnp.float32)
    noised = jnp.sqrt(a) * reference[:, None] + jnp.sqrt(1.0 - a) * reference_noise
    low = gaussian_low_pass(f, h, w, spatial_cutoff, temporal_cutoff)
    axes = (1, 2, 3)
    mixed = jnp.fft.fftn(noised, axes=axes) * low + jnp.fft.fftn(noise, axes=axes) * (1.0 - low)
    return jnp.real(jnp.fft.ifftn(mixed, axes=axes)).astype(noise.dtype)
