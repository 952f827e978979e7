"""The generic train step on a small model: micro-batches, trainable masks, EMA, AdamW, and
example keys that follow the data position rather than the row."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mv2_jax.training import losses
from mv2_jax.training.optim import make_optimizer, split_params, trainable_paths
from mv2_jax.training.state import create_state
from mv2_jax.training.step import make_train_step


class Denoiser(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16, name="body")(x)
        return nn.Dense(x.shape[-1], name="head")(jax.nn.silu(h))


MODEL = Denoiser()
PARAMS = MODEL.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]


def loss_fn(params, consts, batch, keys):
    noise = losses.per_example_noise(keys, batch["x"].shape[1:], 0.0)
    prediction = MODEL.apply({"params": params}, batch["x"] + consts["scale"] * noise)
    loss = losses.weighted_mse(prediction, noise, jnp.ones(keys.shape[:1]))
    return loss, {"loss": loss}


def optimizer_config(**overrides):
    c = ml_collections.ConfigDict(
        dict(lr=1e-2, lr_schedule="constant", lr_end_factor=0.0, warmup_steps=0, total_steps=10,
             adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=1e-2, grad_clip_norm=1.0)
    )  # fmt: skip
    c.update(overrides)
    return c


def run(steps=3, accum=1, patterns=("*",), ema_decay=0.9, batch=None, **overrides):
    optimizer = make_optimizer(optimizer_config(**overrides))
    paths = trainable_paths(PARAMS, patterns)
    state = create_state(PARAMS, optimizer, paths, seed=1)
    step = jax.jit(
        make_train_step(loss_fn, optimizer, paths, grad_accum_steps=accum, ema_decay=ema_decay)
    )
    if batch is None:
        x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
        batch = {"x": x, "position": np.arange(8, dtype=np.uint32)}
    consts = {"scale": jnp.float32(0.5)}
    history = []
    for _ in range(steps):
        state, metrics = step(state, consts, batch)
        history.append(metrics)
    return state, history, paths


def max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))


def test_micro_batches_give_the_same_update():
    whole, m1, _ = run(accum=1)
    split, m4, _ = run(accum=4)
    assert max_diff(whole.params, split.params) < 1e-6
    assert abs(float(m1[-1]["loss"]) - float(m4[-1]["loss"])) < 1e-6
    assert abs(float(m1[-1]["grad_norm"]) - float(m4[-1]["grad_norm"])) < 1e-6


def test_rows_in_another_order_give_the_same_update():
    """Keys follow `position`, so shuffled rows (another process layout) change nothing."""
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    order = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # two processes' rows, concatenated
    ours, _, _ = run(batch={"x": x, "position": np.arange(8, dtype=np.uint32)})
    theirs, _, _ = run(batch={"x": x[order], "position": order.astype(np.uint32)})
    assert max_diff(ours.params, theirs.params) < 1e-6
    # …while the same rows with other positions are other examples (other noise).
    other, _, _ = run(batch={"x": x, "position": np.arange(8, 16, dtype=np.uint32)})
    assert max_diff(ours.params, other.params) > 1e-4


def test_frozen_params_stay_and_have_no_optimizer_state():
    state, _, paths = run(patterns=("head/*",))
    assert sorted(paths) == [("head", "bias"), ("head", "kernel")]
    trained, frozen = split_params(state.params, paths)
    np.testing.assert_array_equal(frozen["body"]["kernel"], PARAMS["body"]["kernel"])
    assert max_diff(trained["head"], PARAMS["head"]) > 1e-3
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw = (scale_by_adam, …)
    assert set(adam.mu) == {"head"} and set(state.ema) == {"head"}


def test_unknown_trainable_pattern_is_an_error():
    with pytest.raises(ValueError, match=r"match no param.*body/bias"):
        trainable_paths(PARAMS, ("*motion_modules*",))


def test_ema_follows_the_formula():
    """ema ← d·ema + (1 − d)·params after update t, d = min(decay, (1 + t)/(10 + t)): the
    warm-up decays 0.1, 0.18, 0.25, … until they reach `ema_decay` (0.3 here, from t = 2)."""
    optimizer = make_optimizer(optimizer_config())
    paths = trainable_paths(PARAMS, ("*",))
    step = jax.jit(make_train_step(loss_fn, optimizer, paths, ema_decay=0.3))
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    state = create_state(PARAMS, optimizer, paths, seed=1)
    ema = PARAMS
    for d in (0.1, 2 / 11, 0.25, 0.3):
        state, _ = step(state, {"scale": jnp.float32(0.5)}, {"x": x})
        ema = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, ema, state.params)
    assert max_diff(state.ema, ema) < 1e-6


def test_adamw_matches_optax_reference():
    """One step equals optax's clip → adamw on the gradient of the same loss."""
    state, _, _ = run(steps=1)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 0), i))(
        jnp.arange(8, dtype=jnp.uint32)
    )
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    grads = jax.grad(lambda p: loss_fn(p, {"scale": 0.5}, {"x": x}, keys)[0])(PARAMS)
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2),
    )
    updates, _ = reference.update(grads, reference.init(PARAMS), PARAMS)
    assert max_diff(state.params, optax.apply_updates(PARAMS, updates)) < 1e-6
