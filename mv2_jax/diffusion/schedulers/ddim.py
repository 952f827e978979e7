"""DDIM: the non-Markovian sampler that reuses a DDPM's training, deterministic at η = 0 (Song,
Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12), as diffusers' `DDIMScheduler`.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion import schedules
from mv2_jax.diffusion.schedulers.base import Scheduler, State, Tables, register
from mv2_jax.diffusion.schedulers.ddpm import (
    DISCRETE_DEFAULTS,
    NO_THRESHOLDING,
    clip_x0,
    discrete_add_noise,
    discrete_prediction,
)


@register
class DDIM(Scheduler):
    """x_{t−Δ} = √ᾱ_{t−Δ} x̂₀ + √(1 − ᾱ_{t−Δ} − σₜ²) ε̂ + σₜ z, σₜ = η √((1−ᾱ_{t−Δ})/(1−ᾱₜ)
    · (1 − ᾱₜ/ᾱ_{t−Δ})) (eq. 16). As in diffusers, Δ = T // n whatever the spacing, and
    ᾱ below t = 0 is 1 (`set_alpha_to_one`) or ᾱ₀. `eta` is our option (diffusers passes it to
    `step`); the noise is used only when eta > 0."""

    name = "ddim"
    diffusers_class = "DDIMScheduler"
    defaults = MappingProxyType({**DISCRETE_DEFAULTS, "set_alpha_to_one": True})
    fixed = NO_THRESHOLDING
    options = MappingProxyType({"eta": 0.0})

    def step_tables(self, num_inference_steps: int) -> Tables:
        c = self.config
        T = c["num_train_timesteps"]
        ac = self.train_alphas_cumprod()
        t = schedules.discrete_timesteps(
            c["timestep_spacing"], num_inference_steps, T, c["steps_offset"]
        )
        prev = t - T // num_inference_steps
        one, half = np.float32(1.0), np.float32(0.5)
        final = one if c["set_alpha_to_one"] else ac[0]
        a_t = ac[t]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
        beta_t, beta_prev = one - a_t, one - a_prev
        variance = (beta_prev / beta_t) * (one - a_t / a_prev)
        std = np.float32(c["eta"]) * variance**half
        return {
            "timesteps": t,
            "sqrt_alpha": a_t**half,
            "sqrt_one_minus_alpha": beta_t**half,
            "sqrt_alpha_prev": a_prev**half,
            "coef_eps": (one - a_prev - std**2) ** half,
            "noise_std": std,
        }

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at, _, x0, eps = discrete_prediction(self, tables, i, sample, model_output)
        x0 = clip_x0(self, x0)  # ε̂ stays unclipped, as diffusers' default use_clipped_model_output
        prev = at("sqrt_alpha_prev") * x0 + at("coef_eps") * eps
        if self.config["eta"] > 0:
            prev = prev + at("noise_std") * noise.astype(jnp.float32)
        return prev.astype(sample.dtype), {"count": state["count"] + 1}

    def add_noise(self, tables: Tables, original, noise, i) -> jax.Array:
        return discrete_add_noise(tables, original, noise, i)
