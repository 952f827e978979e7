"""The latent consistency distillation objective (Luo et al. 2023, "Latent Consistency Models",
arXiv:2310.04378, Alg. 1 / eq. 9), with the guidance folded into the teacher's target as
LCM-LoRA does (Luo et al. 2023, arXiv:2311.05556): the student has no guidance input and
samples with one UNet call a step.

For clean latents z, noise ε and a point tₙ₊ₖ of the skipping-step grid (`ddim_grid`):

    x_t  = √ᾱ_t z + √(1−ᾱ_t) ε,                        t = tₙ₊ₖ,  s = max(t − k·T/N, 0)
    f_θ(x, t) = c_skip(t) x + c_out(t) x̂₀(θ; x, t)      (boundary scalings, schedulers/lcm.py)
    ô    = o_u + w (o_c − o_u),  w ~ U[w_min, w_max]     (the teacher's output, CFG; no grad)
    x̂_s  = √ᾱ_s x̂₀(ô) + √(1−ᾱ_s) ε̂(ô)                  (one DDIM step of the teacher, η = 0)
    L    = mean d(f_θ(x_t, t), sg f_θ⁻(x̂_s, s))          (θ⁻: the EMA of θ)

with d the pseudo-Huber distance √((a−b)² + c²) − c per element (Song & Dhariwal 2023,
"Improved Techniques for Training Consistency Models", §3.3) or the squared error. w is the
pipelines' `guidance_scale` (LCM's ω is w − 1). Mixing the outputs is mixing x̂₀ and ε̂: both
are affine in the output at a fixed (x_t, t).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.guidance import classifier_free_guidance
from mv2_jax.diffusion.schedulers.base import eps_from_output, x0_from_output
from mv2_jax.diffusion.schedulers.lcm import boundary_scalings, consistency_timesteps

LOSS_TYPES = ("huber", "l2")

# predict(x [B, ...], timesteps [B]) → the model's output (ε, v or x₀) at those timesteps
Predict = Callable[[jax.Array, jax.Array], jax.Array]
# guided(x [B, ...], timesteps [B], scales [B]) → the teacher's guided output
Guided = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclass(frozen=True)
class ConsistencySettings:
    """`config.lcd` (see configs/lcd.py): the grid, skip k, guidance range, distance, scaling."""

    num_ddim_timesteps: int
    skip_steps: int
    guidance_scale_min: float
    guidance_scale_max: float
    loss_type: str
    huber_c: float
    timestep_scaling: float

    @property
    def guided(self) -> bool:
        """Whether the teacher needs its negative branch (some w ≠ 1)."""
        return not self.guidance_scale_min == self.guidance_scale_max == 1.0


def ddim_grid(num_train_timesteps: int, num_ddim_timesteps: int) -> np.ndarray:
    """The N points tₙ = (n+1)·⌊T/N⌋ − 1 (int32, ascending) the teacher's solver steps
    between: the LCM scheduler's `original_inference_steps` schedule, which the student samples
    a subset of."""
    grid = consistency_timesteps(num_ddim_timesteps, num_ddim_timesteps, num_train_timesteps)
    return grid[::-1].astype(np.int32)


def consistency_tables(alphas_cumprod: np.ndarray, settings: ConsistencySettings) -> dict:
    """fp32 tables the loss indexes (consts): the grid, and per train timestep √ᾱ, √(1−ᾱ),
    c_skip and c_out."""
    alphas_cumprod = np.asarray(alphas_cumprod, np.float32)
    steps = np.arange(len(alphas_cumprod))
    c_skip, c_out = boundary_scalings(steps, settings.timestep_scaling)
    return {
        "grid": ddim_grid(len(alphas_cumprod), settings.num_ddim_timesteps),
        "alpha": np.sqrt(alphas_cumprod),
        "sigma": np.sqrt(np.float32(1.0) - alphas_cumprod),
        "c_skip": c_skip.astype(np.float32),
        "c_out": c_out.astype(np.float32),
    }


def sample_points(
    index_keys: jax.Array, guidance_keys: jax.Array, tables: dict, settings: ConsistencySettings
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(t, s, w) `[B]` per example key: t a grid point, s = t − k·⌊T/N⌋ clamped at 0, w uniform
    in [w_min, w_max]."""
    grid = tables["grid"]
    index = jax.vmap(lambda k: jax.random.randint(k, (), 0, grid.shape[0]))(index_keys)
    t = grid[index]
    ratio = tables["alpha"].shape[0] // grid.shape[0]
    s = jnp.maximum(t - settings.skip_steps * ratio, 0)
    lo, hi = settings.guidance_scale_min, settings.guidance_scale_max
    w = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32, lo, hi))(guidance_keys)
    return t, s, w


def _at(table: jax.Array, timesteps: jax.Array, ndim: int) -> jax.Array:
    values = table[timesteps]
    return values.reshape(values.shape + (1,) * (ndim - 1))


def consistency_function(
    output: jax.Array, x: jax.Array, t: jax.Array, tables: dict, prediction_type: str
) -> jax.Array:
    """f(x, t) = c_skip(t)·x + c_out(t)·x̂₀ of a model's `output` at (x, t)."""
    alpha, sigma = _at(tables["alpha"], t, x.ndim), _at(tables["sigma"], t, x.ndim)
    x0 = x0_from_output(prediction_type, x, output.astype(jnp.float32), alpha, sigma)
    return _at(tables["c_skip"], t, x.ndim) * x + _at(tables["c_out"], t, x.ndim) * x0


def ddim_solver_step(
    output: jax.Array, x: jax.Array, t: jax.Array, s: jax.Array, tables: dict, prediction_type
) -> jax.Array:
    """x̂_s from x_t by one deterministic DDIM step (Song et al. 2021, eq. 12, σ = 0) with the
    (guided) `output` at t."""
    alpha, sigma = _at(tables["alpha"], t, x.ndim), _at(tables["sigma"], t, x.ndim)
    output = output.astype(jnp.float32)
    x0 = x0_from_output(prediction_type, x, output, alpha, sigma)
    eps = eps_from_output(prediction_type, x, output, x0, alpha, sigma)
    return _at(tables["alpha"], s, x.ndim) * x0 + _at(tables["sigma"], s, x.ndim) * eps


def distance(a: jax.Array, b: jax.Array, settings: ConsistencySettings) -> jax.Array:
    """The mean over every element of the pseudo-Huber or squared distance, in fp32."""
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    if settings.loss_type == "huber":
        c = jnp.float32(settings.huber_c)
        return jnp.mean(jnp.sqrt(diff**2 + c**2) - c)
    return jnp.mean(diff**2)


def consistency_distillation_loss(
    student: Predict,
    teacher: Guided,
    target: Predict,
    latents: jax.Array,
    noise: jax.Array,
    points: tuple[jax.Array, jax.Array, jax.Array],
    tables: dict,
    settings: ConsistencySettings,
    prediction_type: str,
) -> tuple[jax.Array, dict]:
    """(loss, metrics) of the module docstring's L for clean `latents` `[B, ...]`, their
    `noise`, the points (t, s, w) of `sample_points`, and the three networks: the student
    f_θ's output, the teacher's guided output and the EMA target's. `teacher_gap` is the RMS
    between the student's x̂₀-estimate f_θ(x_t, t) and the teacher's guided x̂₀ at t."""
    t, s, w = points
    ndim = latents.ndim
    x_t = _at(tables["alpha"], t, ndim) * latents + _at(tables["sigma"], t, ndim) * noise
    prediction = consistency_function(student(x_t, t), x_t, t, tables, prediction_type)

    guided = jax.lax.stop_gradient(teacher(x_t, t, w).astype(jnp.float32))
    x_s = ddim_solver_step(guided, x_t, t, s, tables, prediction_type)
    aim = consistency_function(target(x_s, s), x_s, s, tables, prediction_type)
    aim = jax.lax.stop_gradient(aim)

    loss = distance(prediction, aim, settings)
    teacher_x0 = x0_from_output(
        prediction_type, x_t, guided, _at(tables["alpha"], t, ndim), _at(tables["sigma"], t, ndim)
    )
    metrics = {
        "loss": loss,
        "consistency_mse": jnp.mean((prediction - aim) ** 2),
        "teacher_gap": jnp.sqrt(jnp.mean((prediction - jax.lax.stop_gradient(teacher_x0)) ** 2)),
        "guidance_scale": jnp.mean(w),
        "timestep": jnp.mean(t.astype(jnp.float32)),
    }
    return loss, metrics


def guided_output(both: jax.Array, scales: jax.Array) -> jax.Array:
    """The negative-first `[2B, ...]` outputs of a guided call → `[B, ...]` at per-example
    guidance `scales` `[B]`."""
    uncond, cond = jnp.split(both, 2)
    return classifier_free_guidance(uncond, cond, scales.reshape((-1,) + (1,) * (cond.ndim - 1)))
