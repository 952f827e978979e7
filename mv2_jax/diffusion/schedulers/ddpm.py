"""DDPM ancestral sampling: x_{t−1} ~ q(x_{t−1} | xₜ, x̂₀), the posterior of the forward process
given the model's estimate of x₀ (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
eqs. 6–7), as diffusers' `DDPMScheduler` runs it.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion import schedules
from mv2_jax.diffusion.schedulers.base import (
    Scheduler,
    State,
    Tables,
    eps_from_output,
    register,
    row,
    x0_from_output,
)

# Keys shared by the DDPM / DDIM family (diffusers' defaults), and those left unimplemented.
DISCRETE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
NO_THRESHOLDING = {"thresholding": (False,)}


def clip_x0(scheduler: Scheduler, x0: jax.Array) -> jax.Array:
    """`clip_sample`: x̂₀ clamped to ±`clip_sample_range` (images live in [−1, 1])."""
    if scheduler.config["clip_sample"]:
        r = scheduler.config["clip_sample_range"]
        return jnp.clip(x0, -r, r)
    return x0


def discrete_prediction(scheduler: Scheduler, tables: Tables, i, sample, model_output):
    """What a discrete-time step starts from, in float32: (`at` = step `i`'s table entries, xₜ,
    x̂₀ unclipped, ε̂) under xₜ = √ᾱₜ x₀ + √(1 − ᾱₜ) ε; the step uses what it needs (XLA drops
    the rest)."""
    at = row(tables, i)
    x, out = sample.astype(jnp.float32), model_output.astype(jnp.float32)
    a, sigma = at("sqrt_alpha"), at("sqrt_one_minus_alpha")
    pred = scheduler.config["prediction_type"]
    x0 = x0_from_output(pred, x, out, a, sigma)
    return at, x, x0, eps_from_output(pred, x, out, x0, a, sigma)


def discrete_add_noise(tables: Tables, original, noise, i) -> jax.Array:
    """xₜ = √ᾱₜ x₀ + √(1 − ᾱₜ) ε at t = timesteps[i] (Ho et al. 2020, eq. 4)."""
    at = row(tables, i)
    a, s = at("sqrt_alpha"), at("sqrt_one_minus_alpha")
    return (a * original.astype(jnp.float32) + s * noise.astype(jnp.float32)).astype(original.dtype)


@register
class DDPM(Scheduler):
    """Ancestral DDPM: x_{t−1} = c₀ x̂₀ + cₜ xₜ + σₜ z with the posterior mean coefficients
    c₀ = √ᾱ_{t−1} βₜ/(1−ᾱₜ), cₜ = √αₜ (1−ᾱ_{t−1})/(1−ᾱₜ), and σₜ² = β̃ₜ (`fixed_small`) or βₜ
    (`fixed_large`); "t−1" is the next timestep of the spaced schedule, no noise at t = 0."""

    name = "ddpm"
    diffusers_class = "DDPMScheduler"
    defaults = MappingProxyType({**DISCRETE_DEFAULTS, "variance_type": "fixed_small"})
    fixed = MappingProxyType(
        {**NO_THRESHOLDING, "variance_type": ("fixed_small", "fixed_small_log", "fixed_large")}
    )

    def step_tables(self, num_inference_steps: int) -> Tables:
        c = self.config
        ac = self.train_alphas_cumprod()
        t = schedules.discrete_timesteps(
            c["timestep_spacing"], num_inference_steps, c["num_train_timesteps"], c["steps_offset"]
        )
        # diffusers finds "the previous timestep" as the entry after t's first occurrence.
        first = np.array([np.flatnonzero(t == v)[0] for v in t])
        prev = np.where(first + 1 < len(t), t[np.minimum(first + 1, len(t) - 1)], -1)
        one = np.float32(1.0)
        a_t = ac[t]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], one)
        beta_t, beta_prev = one - a_t, one - a_prev
        alpha_step = a_t / a_prev
        beta_step = one - alpha_step
        half = np.float32(0.5)
        variance = np.maximum((one - a_prev) / (one - a_t) * beta_step, np.float32(1e-20))
        std = {
            "fixed_small": variance**half,
            "fixed_small_log": np.exp(half * np.log(variance)),
            "fixed_large": beta_step**half,
        }[c["variance_type"]]
        return {
            "timesteps": t,
            "sqrt_alpha": a_t**half,
            "sqrt_one_minus_alpha": beta_t**half,
            "coef_x0": a_prev**half * beta_step / beta_t,
            "coef_xt": alpha_step**half * beta_prev / beta_t,
            "noise_std": np.where(t > 0, std, np.float32(0)).astype(np.float32),
        }

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at, x, x0, _ = discrete_prediction(self, tables, i, sample, model_output)
        prev = at("coef_x0") * clip_x0(self, x0) + at("coef_xt") * x
        prev = prev + at("noise_std") * noise.astype(jnp.float32)
        return prev.astype(sample.dtype), {"count": state["count"] + 1}

    def add_noise(self, tables: Tables, original, noise, i) -> jax.Array:
        return discrete_add_noise(tables, original, noise, i)
