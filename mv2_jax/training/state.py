"""The train state and its shardings: params (the whole trained model), the optimizer state and
EMA of the trainable subset, the step, and the run's base PRNG key.

Shardings come from the params' logical axis names (`jax.eval_shape`, nothing allocated);
the optimizer's moments and the EMA follow their params, scalars are replicated. The state is
then created straight onto the mesh (`jax.jit(..., out_shardings=...)`), so no device ever
holds the full params.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mv2_jax.training.optim import split_params


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # the trained model's params, trainable and frozen
    opt_state: Any  # over the trainable subset only
    ema: Any  # EMA of the trainable subset (optax.incremental_update)
    rng: jax.Array  # uint32[2]: the run's key; step s uses fold_in(rng, s)


def create_state(params: Any, optimizer: optax.GradientTransformation, paths, seed: int):
    """A fresh state from `params` (traceable: used under `jax.eval_shape` and `jax.jit`)."""
    trainable, _ = split_params(params, paths)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(trainable),
        ema=jax.tree.map(jnp.copy, trainable),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def state_shardings(
    abstract_state: TrainState,
    param_shardings: Any,
    optimizer: optax.GradientTransformation,
    paths,
    mesh: Mesh,
) -> TrainState:
    """A `TrainState` of `NamedSharding`s: params as `param_shardings`, Adam moments and EMA
    like the params they belong to, everything else replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    trainable_shardings, _ = split_params(param_shardings, paths)
    opt = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_state.opt_state,
        trainable_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=opt,
        ema=trainable_shardings,
        rng=replicated,
    )


def init_state_on_mesh(
    params: Any, optimizer: optax.GradientTransformation, paths, seed: int, shardings: TrainState
) -> TrainState:
    """The initial state from `params` already on their shards (loaded with
    `load_component(..., shardings=...)`): a jit computes the optimizer state and EMA straight
    onto `shardings` (from `state_shardings`)."""
    return jax.jit(lambda p: create_state(p, optimizer, paths, seed), out_shardings=shardings)(
        params
    )
