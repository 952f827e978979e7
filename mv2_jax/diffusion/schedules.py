"""Noise schedules on the host, in numpy: betas, ᾱ (alphas_cumprod), σ and the inference timesteps.

Everything here reproduces diffusers' float32 / float64 choices value for value (torch's float32
`linspace` and its double-accumulated `cumprod` included), so that tables built from it agree
with a diffusers scheduler step by step.
"""

from __future__ import annotations

import math

import numpy as np


def torch_linspace(start: float, end: float, n: int) -> np.ndarray:
    """`torch.linspace(start, end, n, dtype=float32)` bit for bit: a float32 step, then the first
    half counted up from `start` and the second half down from `end` (numpy's differs by an ulp)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(n - 1) if n > 1 else np.float32(0.0)
    i = np.arange(n)
    up = np.float64(start32) + np.float64(step) * i
    down = np.float64(end32) - np.float64(step) * (n - 1 - i)
    return np.where(i < n // 2, up, down).astype(np.float32)


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """`squaredcos_cap_v2`: βₜ = 1 − ᾱ(t+1)/ᾱ(t) with ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008,
    capped at `max_beta` (Nichol & Dhariwal 2021, eq. 17)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return np.asarray(betas, np.float64).astype(np.float32)


def make_betas(
    beta_schedule: str,
    beta_start: float,
    beta_end: float,
    num_train_timesteps: int,
    trained_betas=None,
) -> np.ndarray:
    """The training betas `[T]` (float32) of a diffusers scheduler config."""
    if trained_betas is not None:
        return np.asarray(trained_betas, np.float32)
    if beta_schedule == "linear":
        return torch_linspace(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":  # the latent-diffusion schedule: linear in √β
        return torch_linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise NotImplementedError(
        f"beta_schedule={beta_schedule!r} is not implemented "
        "(supported: 'linear', 'scaled_linear', 'squaredcos_cap_v2', or trained_betas)."
    )


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """ᾱₜ = ∏ₛ≤ₜ (1 − βₛ) `[T]`; accumulated in float64 then rounded, as torch's CPU `cumprod`
    does for float32 tensors."""
    return np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray, sqrt=np.sqrt) -> np.ndarray:
    """Shift and scale √ᾱ so that √ᾱ_T = 0 while √ᾱ₀ is kept: the last step is pure noise
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1).

    Recovering β from ᾱ is ill-conditioned (1 − ᾱₜ/ᾱₜ₋₁), so an ulp in √ᾱ becomes ~1e-6 in ᾱ;
    torch's float32 sqrt is not correctly rounded, and given it as `sqrt` this is bit-exact."""
    root = sqrt(alphas_cumprod(betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    bar = root**2
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """σₜ = √((1 − ᾱₜ)/ᾱₜ) `[T]` (float32): the noise level of x/√ᾱ, the variance-exploding view
    of the same process (Karras et al. 2022, Table 1)."""
    return ((np.float32(1.0) - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)


def discrete_timesteps(spacing: str, n: int, T: int, steps_offset: int = 0) -> np.ndarray:
    """DDPM / DDIM timesteps (int64, descending) for `n` steps out of `T`; `spacing` as in Lin
    et al. 2023, Table 2. `trailing` can give n + 1 of them (float `arange`), as diffusers does."""
    if n > T:
        raise ValueError(f"num_inference_steps={n} exceeds num_train_timesteps={T}.")
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r}: use 'linspace', 'leading' or 'trailing'.")


def sigma_timesteps(spacing: str, n: int, T: int, steps_offset: int = 0) -> np.ndarray:
    """Euler-family timesteps (float32, descending): as `discrete_timesteps`, except that
    `linspace` is not rounded to integers."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        steps = (np.arange(n) * (T // n)).round()[::-1].astype(np.float32)
        return steps + np.float32(steps_offset)
    if spacing == "trailing":
        return np.arange(T, 0, -T / n).round().astype(np.float32) - np.float32(1)
    raise ValueError(f"timestep_spacing={spacing!r}: use 'linspace', 'leading' or 'trailing'.")


def solver_timesteps(
    spacing: str, n: int, T: int, steps_offset: int = 0, last_timestep: int | None = None
) -> np.ndarray:
    """Multistep-solver timesteps (int64): `n + 1` points with the final one (t = 0) dropped, for
    DPM-Solver and UniPC; `last_timestep` < T when low noise levels are clipped away."""
    last = T if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        steps = (np.arange(n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64)
        return steps + steps_offset
    if spacing == "trailing":
        return np.arange(last, 0, -T / n).round().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r}: use 'linspace', 'leading' or 'trailing'.")


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """σᵢ = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, float64 `[n]`
    (Karras et al. 2022, "Elucidating the Design Space…", eq. 5, ρ = 7)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each σ: linear interpolation in log σ between the two
    neighbouring training levels (`log_sigmas` ascending in t), clamped to the table's ends."""
    log_sigma = np.log(np.maximum(np.asarray(sigmas, np.float64), 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)
