"""Latent consistency sampling (Luo et al. 2023, "Latent Consistency Models", Alg. 1):
a consistency model maps any xₜ to x₀ in one call; the multistep sampler re-noises that estimate
to the next, lower timestep with fresh noise. As diffusers' `LCMScheduler`; the timestep rule
shared with `TCDScheduler` (tcd.py) lives here too.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.schedulers.base import Scheduler, State, Tables, register
from mv2_jax.diffusion.schedulers.ddpm import (
    NO_THRESHOLDING,
    clip_x0,
    discrete_add_noise,
    discrete_prediction,
)

# `LCMScheduler.__init__`'s keys and defaults (`TCDScheduler`'s are the same). diffusers reads
# neither `timestep_spacing` nor `steps_offset` in these classes: the timesteps are always
# `consistency_timesteps`, and so are ours.
CONSISTENCY_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "original_inference_steps": 50,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "timestep_scaling": 10.0,
    "rescale_betas_zero_snr": False,
}
SIGMA_DATA = 0.5  # the data standard deviation in the consistency parameterisation


def consistency_timesteps(
    num_inference_steps: int, original_steps: int, num_train_timesteps: int, strength: float = 1.0
) -> np.ndarray:
    """The LCM / TCD timesteps (int64, descending): the distillation schedule of
    `original_steps` points tₖ = k·(T // original_steps) − 1, its first `⌊original_steps ·
    strength⌋` kept (img2img starts lower), and `num_inference_steps` of those taken at evenly
    spaced indices from the top, as diffusers' `set_timesteps(n, strength=…)`."""
    n, T = num_inference_steps, num_train_timesteps
    if original_steps > T:
        raise ValueError(f"original_inference_steps={original_steps} exceeds "
                         f"num_train_timesteps={T}.")  # fmt: skip
    if n > T:
        raise ValueError(f"num_inference_steps={n} exceeds num_train_timesteps={T}.")
    if n > original_steps:
        raise ValueError(
            f"num_inference_steps={n} exceeds original_inference_steps={original_steps}: the "
            "timesteps are a subset of the distillation schedule."
        )
    kept = int(original_steps * strength)
    if kept < n:
        raise ValueError(
            f"original_inference_steps × strength = {original_steps} × {strength} leaves {kept} "
            f"timesteps, fewer than num_inference_steps={n}; lower the steps or raise strength."
        )
    origin = (np.arange(1, kept + 1) * (T // original_steps) - 1)[::-1]
    indices = np.floor(np.linspace(0, kept, num=n, endpoint=False)).astype(np.int64)
    return origin[indices].astype(np.int64)


class ConsistencyScheduler(Scheduler):
    """Shared by LCM and TCD: diffusers' config keys, the timesteps (`strength` as in
    `set_timesteps(strength=…)`) and the forward process q(xₜ | x₀) for img2img.

    Two img2img conventions meet here. diffusers' general img2img pipelines (SD img2img,
    AnimateDiff video-to-video) call `set_timesteps(n)` and start at step n − ⌊n·strength⌋:
    that is `tables(n, …)` with the sampler's `start = start_index(n, strength)`, what our
    pipelines do. `LatentConsistencyModelImg2ImgPipeline` instead builds n timesteps below the
    strength's level, `set_timesteps(n, strength=…)`, and runs them all: `tables(n, …,
    strength=…)` with `start = 0`."""

    defaults = MappingProxyType(CONSISTENCY_DEFAULTS)

    def step_tables(self, num_inference_steps: int, strength: float = 1.0) -> Tables:
        c = self.config
        t = consistency_timesteps(
            num_inference_steps, c["original_inference_steps"], c["num_train_timesteps"], strength
        )
        ac = self.train_alphas_cumprod()
        one, half = np.float32(1.0), np.float32(0.5)
        return {
            "timesteps": t,
            "sqrt_alpha": ac[t] ** half,
            "sqrt_one_minus_alpha": (one - ac[t]) ** half,
            **self.renoising_tables(t, ac),
        }

    def renoising_tables(self, timesteps: np.ndarray, alphas_cumprod: np.ndarray) -> Tables:
        """The per-step coefficients of the algorithm's own update."""
        raise NotImplementedError

    def add_noise(self, tables: Tables, original, noise, i) -> jax.Array:
        return discrete_add_noise(tables, original, noise, i)


def boundary_scalings(timesteps: np.ndarray, timestep_scaling: float) -> tuple[np.ndarray, ...]:
    """c_skip(t) = σ_d² / ((s·t)² + σ_d²), c_out(t) = s·t / √((s·t)² + σ_d²) with s =
    `timestep_scaling`: the boundary condition f(x, 0) = x of Song et al. 2023 ("Consistency
    Models", §3) on discrete t, in float32 as diffusers computes them from a tensor timestep."""
    scaled = timesteps.astype(np.float32) * np.float32(timestep_scaling)
    d2 = np.float32(SIGMA_DATA**2)
    denominator = scaled**2 + d2
    return d2 / denominator, scaled / denominator ** np.float32(0.5)


@register
class LCM(ConsistencyScheduler):
    """Multistep consistency sampling: x̂₀ from the model output (ε, v or x₀; clipped with
    `clip_sample`), the consistency function fθ(xₜ) = c_skip xₜ + c_out x̂₀, then
    x_{t'} = √ᾱ_{t'} fθ + √(1 − ᾱ_{t'}) z at the next timestep t'; the last step returns fθ.
    Dynamic thresholding is not implemented (as in our DDPM / DDIM)."""

    name = "lcm"
    diffusers_class = "LCMScheduler"
    fixed = NO_THRESHOLDING

    def renoising_tables(self, timesteps: np.ndarray, alphas_cumprod: np.ndarray) -> Tables:
        one, half = np.float32(1.0), np.float32(0.5)
        a_next = alphas_cumprod[timesteps[1:]]
        c_skip, c_out = boundary_scalings(timesteps, self.config["timestep_scaling"])
        return {
            "c_skip": c_skip,
            "c_out": c_out,
            # re-noising to the next timestep; none after the last step
            "coef_denoised": np.append(a_next**half, one),
            "noise_std": np.append((one - a_next) ** half, np.float32(0.0)),
        }

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at, x, x0, _ = discrete_prediction(self, tables, i, sample, model_output)
        denoised = at("c_out") * clip_x0(self, x0) + at("c_skip") * x
        prev = at("coef_denoised") * denoised + at("noise_std") * noise.astype(jnp.float32)
        return prev.astype(sample.dtype), {"count": state["count"] + 1}
