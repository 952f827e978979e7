"""One optimizer step: the stage's loss over the global batch (as `grad_accum_steps` scanned
micro-batches), global-norm clipping and AdamW on the trainable params, and their EMA.

A stage whose loss reads the EMA (`stage_contract.ReadsEma`: consistency distillation's
target network) gets it as `consts[EMA_CONST]`: the trainable subset's EMA as the step starts.

Each example gets the key `fold_in(fold_in(rng, step), position)`, its place in the data's
global order (the batch's `position`; the row index when the batch has none), so its noise,
timestep and caption dropout depend neither on the device layout, nor on the number of
processes and where their rows land in the global batch, nor on the micro-batch split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mv2_jax.training.optim import merge_params, split_params
from mv2_jax.training.state import TrainState

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]
EMA_CONST = "ema"  # the consts key of the EMA, for a loss that reads it (`ema_in_consts`)


def example_keys(rng_data: jax.Array, step: jax.Array, positions: jax.Array) -> jax.Array:
    """Keys `[B]` of the step's examples, from their global `positions` `[B]`."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(positions.astype(jnp.uint32))


def _micro_batches(tree: Any, n: int) -> Any:
    """`[B, ...]` → `[n, B/n, ...]` with micro-batch j holding examples j, j+n, j+2n, …, so
    each micro-batch is spread over all the devices the batch is sharded over."""

    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def ema_decay_at(step: jax.Array, ema_decay: float) -> jax.Array:
    """The EMA's decay at update `step` (0-based): `min(ema_decay, (1 + step) / (10 + step))`,
    diffusers' warm-up. A constant decay from step 0 keeps `ema_decay ** step` of the initial
    weights (37 % after 1,000 steps at 0.999): short runs would export mostly their start."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    paths,
    *,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    learning_rate: optax.Schedule | None = None,
    ema_in_consts: bool = False,
) -> Callable[[TrainState, Any, dict], tuple[TrainState, dict]]:
    """`step(state, consts, batch) → (state, metrics)`; `loss_fn(params, consts, batch, keys)`
    is the stage's loss of one micro-batch. `ema_in_consts`: the loss also finds the EMA of the
    trainable params as `consts[EMA_CONST]` (never differentiated). Jit it with the state's
    shardings and donate the state."""

    def grads_of(trainable, frozen, consts, batch, keys):
        def loss_of(t):
            return loss_fn(merge_params(t, frozen), consts, batch, keys)

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        return loss, aux, grads

    def step(state: TrainState, consts: Any, batch: dict) -> tuple[TrainState, dict]:
        batch = dict(batch)
        positions = batch.pop("position", None)
        if positions is None:
            positions = jnp.arange(jax.tree.leaves(batch)[0].shape[0])
        keys = example_keys(state.rng, state.step, positions)
        if ema_in_consts:
            consts = {**consts, EMA_CONST: jax.lax.stop_gradient(state.ema)}
        trainable, frozen = split_params(state.params, paths)
        if grad_accum_steps == 1:
            loss, aux, grads = grads_of(trainable, frozen, consts, batch, keys)
        else:
            micro = _micro_batches((batch, keys), grad_accum_steps)

            def accumulate(total, xs):
                loss, aux, grads = grads_of(trainable, frozen, consts, *xs)
                return jax.tree.map(jnp.add, total, (loss, aux, grads)), None

            zero = jax.eval_shape(grads_of, trainable, frozen, consts, *jax.tree.map(
                lambda x: x[0], micro
            ))  # fmt: skip
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            total, _ = jax.lax.scan(accumulate, zero, micro)
            loss, aux, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        ema = optax.incremental_update(
            trainable, state.ema, 1.0 - ema_decay_at(state.step, ema_decay)
        )
        metrics = dict(aux, loss=loss, grad_norm=grad_norm)
        if learning_rate is not None:
            metrics["lr"] = learning_rate(state.step)
        new_state = state.replace(
            step=state.step + 1,
            params=merge_params(trainable, frozen),
            opt_state=opt_state,
            ema=ema,
        )
        return new_state, metrics

    return step
