"""The denoising loop: one `jax.lax.scan` over a padded step table, inside the caller's jit.

The table has a fixed length (`steps_bucket`), the real step count and the first step are traced
scalars, and steps outside `[start, num_steps)` are skipped with `lax.cond`; so a new step count,
strength, seed, prompt or guidance scale reuses the compiled loop.

`denoise_with_last_steps_differentiable` is the same loop split for reward-gradient tuning
(DRaFT-K): the early steps under `stop_gradient`, the last K rematerialised.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Step tables are padded to one of these lengths (beyond the last, to a multiple of it), so that
# every common step count shares a compiled loop while short runs skip few padded steps.
_BUCKETS = (50, 100, 250, 500, 1000)


def steps_bucket(num_inference_steps: int) -> int:
    """The padded table length used for `num_inference_steps`."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
    for bucket in _BUCKETS:
        if num_inference_steps <= bucket:
            return bucket
    return -(-num_inference_steps // _BUCKETS[-1]) * _BUCKETS[-1]


def sampler_key(seed) -> jax.Array:
    """The key of a run's per-step noise, from its seed (int or traced int32): the second half
    of the seed's split, the first being left to a pipeline's other draws."""
    return jax.random.split(jax.random.key(seed))[1]


def step_noise(key: jax.Array, i, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """The fresh unit noise that a stochastic sampler (DDPM, Euler ancestral, LCM, TCD) takes
    at step `i` of the table; tests feed diffusers the same numbers."""
    return jax.random.normal(jax.random.fold_in(key, i), shape, dtype)


def denoise(
    scheduler,
    tables: dict,
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    latents: jax.Array,
    key: jax.Array,
    start: jax.Array | int = 0,
    progress: Callable[..., None] | None = None,
    progress_args: tuple = (),
) -> jax.Array:
    """Run `scheduler` from step `start` to `tables["num_steps"]`.

    `model_fn(scaled_latents, timestep) → model_output` is the (guided) denoiser; `latents` are
    the already-noised starting latents; `key` gives the per-step noise of stochastic samplers
    (`step_noise(key, i, …)`). `progress(i, *progress_args)`, if given, runs on the host after each
    real step through `jax.debug.callback` (the args may be traced, e.g. the id of the call a
    bar belongs to); when None nothing is added to the graph."""
    num_steps = tables["num_steps"]
    length = tables["timesteps"].shape[0]
    one_step = _step_function(scheduler, tables, model_fn, key, progress, progress_args)

    def body(carry, i):
        active = (i >= start) & (i < num_steps)
        return jax.lax.cond(active, one_step, lambda c, _: c, carry, i), None

    carry = (latents, scheduler.init_state(latents))
    (latents, _), _ = jax.lax.scan(body, carry, jnp.arange(length, dtype=jnp.int32))
    return latents


def _step_function(scheduler, tables, model_fn, key, progress=None, progress_args=()):
    """`one_step((sample, state), i) → (sample, state)`: step `i` of the table."""

    def one_step(carry, i):
        sample, state = carry
        model_input = scheduler.scale_model_input(tables, sample, i)
        output = model_fn(model_input, tables["timesteps"][i])
        # fp32 whatever the latents' dtype: bf16 draws are other numbers, and a bf16 run
        # would follow another trajectory than the fp32 one of the same seed (the steps
        # take their noise in fp32 anyway)
        noise = step_noise(key, i, sample.shape)
        sample, state = scheduler.step(tables, state, i, sample, output.astype(sample.dtype), noise)
        if progress is not None:
            jax.debug.callback(progress, i, *progress_args)
        return sample, state

    return one_step


def denoise_with_last_steps_differentiable(
    scheduler,
    tables: dict,
    model_fn: Callable[[object, jax.Array, jax.Array], jax.Array],
    params,
    latents: jax.Array,
    key: jax.Array,
    grad_steps: int,
    start: jax.Array | int = 0,
) -> jax.Array:
    """`denoise` for reward-gradient tuning: the same steps and result, but gradients reach
    `params` only through the last `grad_steps` (K) steps, as DRaFT-K (Clark et al. 2023,
    "Directly Fine-Tuning Diffusion Models on Differentiable Rewards", §4.1) and VADER truncate
    backpropagation.

    `model_fn(params, scaled_latents, timestep)` is the (guided) denoiser. Steps
    `[start, num_steps − K)` run in one scan on `stop_gradient(params)` and their result enters
    the last K under `stop_gradient`, so their backward pass is never built; the last K run in
    a scan of static length K whose body is `jax.checkpoint`ed (activations recomputed in the
    backward pass: memory of one UNet call per step, not of K). `num_steps` stays traced, so a
    new step count reuses the compiled program; K is static (one program per K)."""
    if grad_steps < 1:
        raise ValueError(f"grad_steps (K) must be ≥ 1, got {grad_steps}")
    num_steps = tables["num_steps"]
    length = tables["timesteps"].shape[0]
    first_differentiable = num_steps - grad_steps
    frozen = jax.lax.stop_gradient(params)
    early_step = _step_function(scheduler, tables, lambda x, t: model_fn(frozen, x, t), key)

    def early(carry, i):
        active = (i >= start) & (i < first_differentiable)
        return jax.lax.cond(active, early_step, lambda c, _: c, carry, i), None

    carry = (latents, scheduler.init_state(latents))
    carry, _ = jax.lax.scan(early, carry, jnp.arange(length, dtype=jnp.int32))
    carry = jax.lax.stop_gradient(carry)
    late_step = _step_function(scheduler, tables, lambda x, t: model_fn(params, x, t), key)

    @jax.checkpoint
    def late(carry, j):
        i = first_differentiable + j
        return jax.lax.cond(i >= start, late_step, lambda c, _: c, carry, i), None

    (latents, _), _ = jax.lax.scan(late, carry, jnp.arange(grad_steps, dtype=jnp.int32))
    return latents
