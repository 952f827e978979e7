"""The denoising loop: one `jax.lax.scan` over a padded step table, inside the caller's jit.

The table has a fixed length (`steps_bucket`), the real step count and the first step are traced
scalars, and steps outside `[start, num_steps)` are skipped with `lax.cond`; so a new step count,
strength, seed, prompt or guidance scale reuses the compiled loop.
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
    (`fold_in(key, i)`). `progress(i, *progress_args)`, if given, runs on the host after each
    real step through `jax.debug.callback` (the args may be traced, e.g. the id of the call a
    bar belongs to); when None nothing is added to the graph."""
    num_steps = tables["num_steps"]
    length = tables["timesteps"].shape[0]

    def one_step(carry, i):
        sample, state = carry
        model_input = scheduler.scale_model_input(tables, sample, i)
        output = model_fn(model_input, tables["timesteps"][i])
        noise = jax.random.normal(jax.random.fold_in(key, i), sample.shape, sample.dtype)
        sample, state = scheduler.step(tables, state, i, sample, output.astype(sample.dtype), noise)
        if progress is not None:
            jax.debug.callback(progress, i, *progress_args)
        return sample, state

    def body(carry, i):
        active = (i >= start) & (i < num_steps)
        return jax.lax.cond(active, one_step, lambda c, _: c, carry, i), None

    carry = (latents, scheduler.init_state(latents))
    (latents, _), _ = jax.lax.scan(body, carry, jnp.arange(length, dtype=jnp.int32))
    return latents
