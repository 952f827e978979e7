"""UniPC: a multistep predictor (UniP) plus a corrector (UniC) that reuses the model call of the
next step, both exponential integrators in λ (Zhao et al. 2023, "UniPC: A Unified Predictor-
Corrector Framework for Fast Sampling of Diffusion Models", Alg. 2–3, B(h) variants bh1/bh2), as
diffusers' `UniPCMultistepScheduler` runs it with x̂₀ prediction.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.schedulers.base import State, Tables, register, row
from mv2_jax.diffusion.schedulers.dpm_solver import (
    SOLVER_DEFAULTS,
    SOLVER_FIXED,
    MultistepScheduler,
)


def _increment(lam_from: np.ndarray, lam_to: np.ndarray, alpha_to, bh1: bool):
    """For hh = −(λ_to − λ_from): h φ₁ = e^{hh} − 1, B(h) (bh1: hh, bh2: e^{hh} − 1) and the
    order-2 right-hand side b = (φ₂·1!/B, φ₃·2!/B) of the UniC linear system (eq. 8)."""
    hh = -(lam_to - lam_from)
    phi1 = np.expm1(hh)
    b_h = hh if bh1 else np.expm1(hh)
    phi2 = phi1 / hh - np.float32(1)
    phi3 = phi2 / hh - np.float32(0.5)
    return hh, alpha_to * phi1, alpha_to * b_h, (phi2 / b_h, phi3 * np.float32(2) / b_h)


@register
class UniPC(MultistepScheduler):
    """xₜ = (σₜ/σₛ) x − α h φ₁ m₀ − α B(h) Σ ρₖ Dₖ with Dₖ = (mₖ − m₀)/rₖ, rₖ = (λₖ − λₛ)/h:
    the predictor uses ρ = ½ at order 2; the corrector, run on xₜ once the model has seen it,
    solves R(r) ρ = b for its ρ and adds ρ_last (m(xₜ) − m₀). Orders warm up from 1 and, with
    `lower_order_final`, drop near the end; `disable_corrector` lists steps without UniC."""

    name = "unipc"
    diffusers_class = "UniPCMultistepScheduler"
    defaults = MappingProxyType(
        {
            **SOLVER_DEFAULTS,
            "predict_x0": True,
            "solver_type": "bh2",
            "disable_corrector": (),
            "solver_p": None,
            "sigma_min": None,
            "sigma_max": None,
            "shift_terminal": None,
        }
    )
    fixed = MappingProxyType(
        {
            **SOLVER_FIXED,
            "predict_x0": (True,),
            "solver_type": ("bh1", "bh2"),
            "solver_p": (None,),
            "shift_terminal": (None,),
        }
    )
    renamed = MappingProxyType({"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}})
    karras_ends_on_own_min = True

    @classmethod
    def from_config(cls, config, **overrides):
        out = super().from_config(config, **overrides)
        if out.config["solver_type"] == "bh1" and out.config["final_sigmas_type"] == "zero":
            raise NotImplementedError(
                "unipc: solver_type='bh1' with final_sigmas_type='zero' makes diffusers' last "
                "step NaN (B(h) = h is infinite at σ = 0); use final_sigmas_type='sigma_min'."
            )
        return out

    def step_tables(self, num_inference_steps: int) -> Tables:
        c = self.config
        out, lam = self.solver_tables(num_inference_steps)
        n = len(out["timesteps"])
        alpha, sig = out["alpha"], out["sigma_t"]
        bh1 = c["solver_type"] == "bh1"
        order = c["solver_order"]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # Predictor of step k: from λ_k to λ_{k+1}; its order-2 point is λ_{k−1}.
            hh, p_m0, p_d, _ = _increment(lam[:-1], lam[1:], alpha[1:], bh1)
            p_rk = np.concatenate([[np.float32(1)], (lam[:-2] - lam[1:-1]) / -hh[1:]])
            # Corrector of step k: from λ_{k−1} to λ_k (the previous predictor's interval).
            hh_c, c_m0, c_d, (b1, b2) = _increment(lam[:-2], lam[1:-1], alpha[1:-1], bh1)
            c_rk = (lam[:-3] - lam[1:-2]) / -hh_c[1:]
        rho = np.full((n, 2), [0.0, 0.5], np.float32)  # order 1: ρ = ½ on m(xₜ) − m₀
        for k in range(2, n):  # order 2: solve [[1, 1], [r, 1]] ρ = b, in float32 like torch
            r = np.array([[1, 1], [c_rk[k - 2], 1]], np.float32)
            rho[k] = np.linalg.solve(r, np.array([b1[k - 1], b2[k - 1]], np.float32))
        pad = lambda a, front: np.concatenate([np.full(front, 1, np.float32), a])  # noqa: E731
        steps_left = n - np.arange(n)
        max_order = np.minimum(order, steps_left) if c["lower_order_final"] else np.full(n, order)
        enabled = np.array([k >= 1 and k - 1 not in c["disable_corrector"] for k in range(n)])
        out.update(
            p_x=sig[1:] / sig[:-1],
            p_m0=p_m0,
            p_d=p_d,
            p_rk=p_rk,
            max_order=max_order.astype(np.int32),
            c_x=pad(sig[1:-1] / sig[:-2], 1),
            c_m0=pad(c_m0, 1),
            c_d=pad(c_d, 1),
            c_rk=pad(c_rk, 2)[:n],
            c_rho=rho,
            corrector=enabled,
        )
        return out

    def init_state(self, sample: jax.Array) -> State:
        zeros = jnp.zeros(sample.shape, jnp.float32)
        return {"count": jnp.zeros((), jnp.int32), "m0": zeros, "m1": zeros, "last": zeros}

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        at = row(tables, i)
        count, m0, m1 = state["count"], state["m0"], state["m1"]
        x, out = sample.astype(jnp.float32), model_output.astype(jnp.float32)
        x0 = self.to_x0(tables, i, x, out)
        # UniC on x with the previous step's order (warm-up: it had count − 1 outputs before it).
        c_order = jnp.minimum(jnp.asarray(tables["max_order"])[jnp.maximum(i - 1, 0)], count)
        rho = at("c_rho")
        d1 = (m1 - m0) / at("c_rk")
        history = jnp.where(c_order >= 2, rho[0] * d1, 0.0)
        corr = history + jnp.where(c_order >= 2, rho[1], 0.5) * (x0 - m0)
        corrected = at("c_x") * state["last"] - at("c_m0") * m0 - at("c_d") * corr
        x = jnp.where((count >= 1) & at("corrector"), corrected, x)
        # UniP from the (corrected) x with m₀ = x̂₀ and m₁ = the previous x̂₀.
        p_order = jnp.minimum(at("max_order"), count + 1)
        d1 = (m0 - x0) / at("p_rk")
        pred = jnp.where(p_order >= 2, 0.5 * d1, 0.0)
        prev = at("p_x") * x - at("p_m0") * x0 - at("p_d") * pred
        new = {"count": count + 1, "m0": x0, "m1": m0, "last": x}
        return prev.astype(sample.dtype), new
