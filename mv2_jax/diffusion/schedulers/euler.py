"""Euler and Euler-ancestral samplers of the probability-flow ODE / reverse SDE in the σ
(variance-exploding) parameterisation of Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", Alg. 1 without churn), as k-diffusion and diffusers run them.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion import schedules
from mv2_jax.diffusion.schedulers.base import Scheduler, State, Tables, register, row

COMMON_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}


class SigmaScheduler(Scheduler):
    """Shared by the σ-parameterised samplers: xᵢ = x₀ + σᵢ ε is fed to the model as
    xᵢ/√(σᵢ² + 1), the variance-preserving input it was trained on."""

    def train_alphas_cumprod(self) -> np.ndarray:
        ac = super().train_alphas_cumprod()
        if self.config["rescale_betas_zero_snr"]:  # σ_T = ∞ otherwise; diffusers' 2⁻²⁴ floor
            ac = ac.copy()
            ac[-1] = 2.0**-24
        return ac

    def sigma_tables(
        self, n: int, karras: bool = False, final_sigma: str = "zero", continuous: bool = False
    ) -> Tables:
        """Timesteps, σ `[n + 1]` (the last one 0 or σ_min) and the initial noise scale."""
        c = self.config
        ac = self.train_alphas_cumprod()
        sigmas = schedules.train_sigmas(ac)
        log_sigmas = np.log(sigmas)
        t = schedules.sigma_timesteps(
            c["timestep_spacing"], n, c["num_train_timesteps"], c["steps_offset"]
        )
        step_sigmas = np.interp(t, np.arange(len(sigmas)), sigmas)
        if karras:
            lo = c["sigma_min"] if c["sigma_min"] is not None else step_sigmas[-1].item()
            hi = c["sigma_max"] if c["sigma_max"] is not None else step_sigmas[0].item()
            step_sigmas = schedules.karras_sigmas(lo, hi, n)
            t = schedules.sigma_to_t(step_sigmas, log_sigmas)
        if final_sigma == "sigma_min":
            last = ((np.float32(1) - ac[0]) / ac[0]) ** np.float32(0.5)
        else:
            last = 0.0
        sigmas = np.concatenate([step_sigmas, [last]]).astype(np.float32)
        if continuous and c["prediction_type"] == "v_prediction":
            t = np.float32(0.25) * np.log(sigmas[:-1])  # the EDM noise conditioning c_noise
        top = sigmas.max()
        if c["timestep_spacing"] not in ("linspace", "trailing"):
            top = (top**2 + np.float32(1)) ** np.float32(0.5)
        return {"timesteps": t.astype(np.float32), "sigmas": sigmas, "init_noise_sigma": top}

    def scale_model_input(self, tables: Tables, sample: jax.Array, i: jax.Array) -> jax.Array:
        sigma = jnp.asarray(tables["sigmas"])[i]
        return (sample.astype(jnp.float32) / (sigma**2 + 1) ** 0.5).astype(sample.dtype)

    def add_noise(self, tables: Tables, original, noise, i) -> jax.Array:
        """xᵢ = x₀ + σᵢ ε, with σ of step `i` (diffusers' `begin_index` path)."""
        sigma = jnp.asarray(tables["sigmas"])[i]
        return (original.astype(jnp.float32) + noise.astype(jnp.float32) * sigma).astype(
            original.dtype
        )

    def denoised(self, sample: jax.Array, model_output: jax.Array, sigma) -> jax.Array:
        """x̂₀ from an ε-, v- or x₀-prediction in the σ parameterisation."""
        pred = self.config["prediction_type"]
        if pred == "epsilon":
            return sample - sigma * model_output
        if pred == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return model_output


@register
class Euler(SigmaScheduler):
    """x_{i+1} = xᵢ + (σ_{i+1} − σᵢ) dᵢ, dᵢ = (xᵢ − x̂₀)/σᵢ: one Euler step of the probability-
    flow ODE dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022, eq. 3 / Alg. 2 first-order part)."""

    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    defaults = MappingProxyType(
        {
            **COMMON_DEFAULTS,
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
            "use_exponential_sigmas": False,
            "use_beta_sigmas": False,
            "sigma_min": None,
            "sigma_max": None,
            "timestep_type": "discrete",
            "final_sigmas_type": "zero",
        }
    )
    fixed = MappingProxyType(
        {
            "interpolation_type": ("linear",),
            "use_exponential_sigmas": (False,),
            "use_beta_sigmas": (False,),
            "final_sigmas_type": ("zero", "sigma_min"),
            "timestep_type": ("discrete", "continuous"),
        }
    )

    def step_tables(self, num_inference_steps: int) -> Tables:
        c = self.config
        return self.sigma_tables(
            num_inference_steps,
            karras=bool(c["use_karras_sigmas"]),
            final_sigma=c["final_sigmas_type"],
            continuous=c["timestep_type"] == "continuous",
        )

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        sigmas = jnp.asarray(tables["sigmas"])
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, out = sample.astype(jnp.float32), model_output.astype(jnp.float32)
        derivative = (x - self.denoised(x, out, sigma)) / sigma
        prev = x + derivative * (sigma_next - sigma)
        return prev.astype(sample.dtype), {"count": state["count"] + 1}


@register
class EulerAncestral(SigmaScheduler):
    """Euler ancestral: an Euler step down to σ_down, then fresh noise σ_up z, where
    σ_up² = σ²_{i+1}(σᵢ² − σ²_{i+1})/σᵢ² and σ_down² = σ²_{i+1} − σ_up² (k-diffusion's
    `sample_euler_ancestral`, η = 1; Song et al. 2021 ancestral sampling in σ form)."""

    name = "euler_a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    defaults = COMMON_DEFAULTS
    prediction_types = ("epsilon", "v_prediction")  # diffusers raises for "sample" too

    def step_tables(self, num_inference_steps: int) -> Tables:
        out = self.sigma_tables(num_inference_steps)
        # On the host in float32 as torch does: in XLA, σ_up² can round above σ²_{i+1}.
        s_from, s_to = out["sigmas"][:-1], out["sigmas"][1:]
        up = (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** np.float32(0.5)
        out["sigma_up"] = up
        out["sigma_down"] = (s_to**2 - up**2) ** np.float32(0.5)
        return out

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at = row(tables, i)
        sigma = at("sigmas")
        x, out = sample.astype(jnp.float32), model_output.astype(jnp.float32)
        derivative = (x - self.denoised(x, out, sigma)) / sigma
        prev = x + derivative * (at("sigma_down") - sigma)
        prev = prev + noise.astype(jnp.float32) * at("sigma_up")
        return prev.astype(sample.dtype), {"count": state["count"] + 1}
