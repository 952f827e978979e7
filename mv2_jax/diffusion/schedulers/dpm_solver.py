"""DPM-Solver++ (multistep, data prediction): an exponential integrator of the diffusion ODE in
λ = log(α/σ) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Alg. 2), as diffusers' `DPMSolverMultistepScheduler` runs it ("2M").
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion import schedules
from mv2_jax.diffusion.schedulers.base import (
    Scheduler,
    State,
    Tables,
    register,
    row,
    x0_from_output,
)

SOLVER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}
SOLVER_FIXED = {
    "solver_order": (1, 2),
    "thresholding": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
    "final_sigmas_type": ("zero", "sigma_min"),
}


class MultistepScheduler(Scheduler):
    """Shared by the multistep exponential integrators: per-step σ, α = 1/√(σ² + 1), σ·α and
    λ = log α − log σα, with x̂₀ predicted from the model as the state they extrapolate."""

    karras_ends_on_own_min: ClassVar[bool] = False  # final σ_min: the Karras one or the train one

    def train_alphas_cumprod(self) -> np.ndarray:
        ac = super().train_alphas_cumprod()
        if self.config["rescale_betas_zero_snr"]:  # keep λ_T finite, as diffusers does
            ac = ac.copy()
            ac[-1] = 2.0**-24
        return ac

    def karras_range(self, sigmas: np.ndarray) -> tuple[float, float]:
        """(σ_min, σ_max) of a Karras schedule: the config's if set, else the training range.
        diffusers reads them with hasattr(config), so a source config's keys count for DPM too."""
        c = self.config
        lo = c.get("sigma_min") if c.get("sigma_min") is not None else sigmas[0].item()
        hi = c.get("sigma_max") if c.get("sigma_max") is not None else sigmas[-1].item()
        return lo, hi

    def solver_tables(self, n: int, last_timestep: int | None = None) -> tuple[Tables, np.ndarray]:
        """Timesteps and per-step σ, α, σα `[n + 1]` (the last σ 0 or σ_min), and λ `[n + 1]`."""
        c = self.config
        ac = self.train_alphas_cumprod()
        t = schedules.solver_timesteps(
            c["timestep_spacing"], n, c["num_train_timesteps"], c["steps_offset"], last_timestep
        )
        sigmas = schedules.train_sigmas(ac)
        sigma_min_last = ((np.float32(1) - ac[0]) / ac[0]) ** np.float32(0.5)
        if c["use_karras_sigmas"]:
            lo, hi = self.karras_range(sigmas)
            step_sigmas = schedules.karras_sigmas(lo, hi, n)
            t = schedules.sigma_to_t(step_sigmas, np.log(sigmas))
            if self.round_karras_timesteps():
                t = t.round()
            if self.karras_ends_on_own_min:
                sigma_min_last = step_sigmas[-1]
        else:
            step_sigmas = np.interp(t, np.arange(len(sigmas)), sigmas)
        last = sigma_min_last if c["final_sigmas_type"] == "sigma_min" else 0.0
        sigmas = np.concatenate([step_sigmas, [last]]).astype(np.float32)
        one = np.float32(1)
        alpha = one / (sigmas**2 + one) ** np.float32(0.5)
        sigma_t = sigmas * alpha
        with np.errstate(divide="ignore"):  # λ = +∞ at a final σ of 0
            lam = np.log(alpha) - np.log(sigma_t)
        out = {
            "timesteps": t.astype(np.int64),
            "sigmas": sigmas,
            "alpha": alpha,
            "sigma_t": sigma_t,
        }
        return out, lam

    def round_karras_timesteps(self) -> bool:
        return True

    def to_x0(self, tables: Tables, i, sample, model_output) -> jax.Array:
        a, s = jnp.asarray(tables["alpha"])[i], jnp.asarray(tables["sigma_t"])[i]
        return x0_from_output(self.config["prediction_type"], sample, model_output, a, s)

    def add_noise(self, tables: Tables, original, noise, i) -> jax.Array:
        """α x₀ + σ ε at σ of step `i`, as diffusers with `begin_index` set."""
        a, s = jnp.asarray(tables["alpha"])[i], jnp.asarray(tables["sigma_t"])[i]
        noisy = a * original.astype(jnp.float32) + s * noise.astype(jnp.float32)
        return noisy.astype(original.dtype)


@register
class DPMSolverPP(MultistepScheduler):
    """With D₀ = x̂₀(sᵢ) and, from the second step on, D₁ = (D₀ − x̂₀(sᵢ₋₁))/r, r = hᵢ₋₁/hᵢ:
    x_{i+1} = (σ_{i+1}/σᵢ) xᵢ − α_{i+1}(e^{−h} − 1)(D₀ + ½ D₁), h = λ_{i+1} − λᵢ (midpoint; "heun"
    uses −α(e^{−h}−1)D₀ + α((e^{−h}−1)/h + 1)D₁). First order at the first step, and at the last
    one when σ_end = 0, `euler_at_final`, or `lower_order_final` with fewer than 15 steps."""

    name = "dpmpp_2m"
    diffusers_class = "DPMSolverMultistepScheduler"
    defaults = MappingProxyType(
        {
            **SOLVER_DEFAULTS,
            "algorithm_type": "dpmsolver++",
            "solver_type": "midpoint",
            "euler_at_final": False,
            "use_lu_lambdas": False,
            "lambda_min_clipped": -float("inf"),
            "variance_type": None,
        }
    )
    fixed = MappingProxyType(
        {
            **SOLVER_FIXED,
            "algorithm_type": ("dpmsolver++",),
            "solver_type": ("midpoint", "heun"),
            "use_lu_lambdas": (False,),
            "variance_type": (None,),
        }
    )
    # diffusers' __init__ rewrites these (e.g. a UniPC config's "bh2" becomes "midpoint").
    renamed = MappingProxyType(
        {
            "algorithm_type": {"deis": "dpmsolver++"},
            "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
        }
    )

    def round_karras_timesteps(self) -> bool:
        return self.config["beta_schedule"] != "squaredcos_cap_v2"

    def step_tables(self, num_inference_steps: int) -> Tables:
        c = self.config
        T = c["num_train_timesteps"]
        ac = self.train_alphas_cumprod()
        lam_train = np.log(np.sqrt(ac)) - np.log(np.sqrt(np.float32(1) - ac))
        clipped = np.searchsorted(lam_train[::-1], np.float32(c["lambda_min_clipped"]))
        out, lam = self.solver_tables(num_inference_steps, last_timestep=T - int(clipped))
        n = len(out["timesteps"])
        alpha, sig = out["alpha"], out["sigma_t"]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            h = lam[1:] - lam[:-1]
            em = np.exp(-h) - np.float32(1)
            inv_r0 = np.float32(1) / np.concatenate(
                [[np.float32(1)], (lam[1:-1] - lam[:-2]) / h[1:]]
            )
            if c["solver_type"] == "midpoint":
                coef_d1 = np.float32(0.5) * (alpha[1:] * em)
            else:
                coef_d1 = -(alpha[1:] * (em / h + np.float32(1)))
        final = (c["euler_at_final"] or (c["lower_order_final"] and n < 15)
                 or c["final_sigmas_type"] == "zero")  # fmt: skip
        first_only = np.zeros(n, bool)
        first_only[0] = True  # never second order at step 0: there is no previous x̂₀
        first_only[-1] |= final
        first_only |= c["solver_order"] == 1
        out.update(
            coef_x=sig[1:] / sig[:-1],
            coef_d0=alpha[1:] * em,
            inv_r0=np.where(first_only, 0, inv_r0).astype(np.float32),
            coef_d1=np.where(first_only, 0, coef_d1).astype(np.float32),
            first_order_only=first_only,
        )
        return out

    def init_state(self, sample: jax.Array) -> State:
        return {"count": jnp.zeros((), jnp.int32), "x0_prev": jnp.zeros(sample.shape, jnp.float32)}

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at = row(tables, i)
        x, out = sample.astype(jnp.float32), model_output.astype(jnp.float32)
        d0 = self.to_x0(tables, i, x, out)
        second = (state["count"] >= 1) & ~at("first_order_only")
        d1 = at("inv_r0") * (d0 - state["x0_prev"])
        prev = at("coef_x") * x - at("coef_d0") * d0
        prev = prev - jnp.where(second, at("coef_d1") * d1, 0.0)
        return prev.astype(sample.dtype), {"count": state["count"] + 1, "x0_prev": d0}
