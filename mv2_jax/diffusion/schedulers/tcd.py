"""Trajectory consistency sampling (Zheng et al. 2024, "Trajectory Consistency Distillation",
strategic stochastic sampling): from xₜ the model jumps to an intermediate s < t' on the
ODE trajectory, then forward-diffuses to the next timestep t', as diffusers' `TCDScheduler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.schedulers.base import State, Tables, register
from mv2_jax.diffusion.schedulers.ddpm import discrete_prediction
from mv2_jax.diffusion.schedulers.lcm import ConsistencyScheduler


@register
class TCD(ConsistencyScheduler):
    """With γ = `eta` ∈ [0, 1] (diffusers' `step(eta=0.3)`, our option) and t' the next
    timestep (0 after the last): s = ⌊(1 − γ) t'⌋, x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε̂, then
    x_{t'} = √(ᾱ_{t'}/ᾱ_s) x_s + √(1 − ᾱ_{t'}/ᾱ_s) z; the last step returns x_s (no noise), and
    so does every step at γ = 0 (DDIM). diffusers' TCD reads neither `clip_sample` nor
    `thresholding` nor `timestep_scaling`, and neither do we. The timesteps are LCM's
    (`set_timesteps` without its `original_inference_steps` argument, as pipelines call it)."""

    name = "tcd"
    diffusers_class = "TCDScheduler"
    options = MappingProxyType({"eta": 0.3})

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> TCD:
        scheduler = super().from_config(config, **overrides)
        if not 0.0 <= scheduler.config["eta"] <= 1.0:
            raise ValueError(f"tcd: eta (γ) must be in [0, 1], got {scheduler.config['eta']}.")
        return scheduler

    def renoising_tables(self, timesteps: np.ndarray, alphas_cumprod: np.ndarray) -> Tables:
        one, half = np.float32(1.0), np.float32(0.5)
        eta = self.config["eta"]
        following = np.append(timesteps[1:], 0)
        # float32, as torch computes `(1 - eta) * prev_timestep`: float64 floors differ
        s = np.floor(np.float32(1.0 - eta) * following.astype(np.float32)).astype(np.int64)
        a_s, a_next = alphas_cumprod[s], alphas_cumprod[following]
        ratio = a_next / a_s
        renoise = np.arange(len(timesteps)) < len(timesteps) - 1
        if eta == 0:
            renoise[:] = False
        return {
            "sqrt_alpha_s": a_s**half,
            "sqrt_one_minus_alpha_s": (one - a_s) ** half,
            "coef_noised": np.where(renoise, ratio**half, one).astype(np.float32),
            "noise_std": np.where(renoise, (one - ratio) ** half, 0).astype(np.float32),
        }

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at, _, x0, eps = discrete_prediction(self, tables, i, sample, model_output)
        x_s = at("sqrt_alpha_s") * x0 + at("sqrt_one_minus_alpha_s") * eps
        prev = at("coef_noised") * x_s + at("noise_std") * noise.astype(jnp.float32)
        return prev.astype(sample.dtype), {"count": state["count"] + 1}
