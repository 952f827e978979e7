"""Rematerialisation changes memory, never values: gradients under every remat policy equal
those without, and the UNet passes its policy down to its blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.t2i import tiny_model
from mv2_jax.models.remat import REMAT_POLICIES
from mv2_jax.models.unet import UNet2DConditionModel
from mv2_jax.models.unet_blocks import DownBlock


def _grads(policy: str):
    """Gradients of a cross-attention down block (the ResNet and transformer that the UNet's
    remat wraps), inputs included."""
    block = DownBlock(
        16, 1, temb_channels=32, transformer_layers=(1,), num_attention_heads=2,
        cross_attention_dim=24, resnet_groups=4, remat_policy=policy,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32)
    temb = jnp.asarray(rng.standard_normal((2, 32)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((2, 5, 24)), jnp.float32)
    params = nn.meta.unbox(block.init(jax.random.key(0), x, temb, context)["params"])

    def loss(p, x):
        out, skips = block.apply({"params": p}, x, temb, context)
        return jnp.mean(out**2) + sum(jnp.mean(s) for s in skips)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def test_remat_gives_the_same_gradients():
    reference = _grads("none")
    # The two the configs use; "dots" is the same mechanism as "dots_no_batch".
    for policy in ("full", "dots_no_batch"):
        assert policy in REMAT_POLICIES
        grads = _grads(policy)
        diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, reference)
        scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(reference))
        assert max(jax.tree.leaves(diff)) <= 1e-6 * scale, policy


def test_unknown_policy_is_an_error():
    unet = UNet2DConditionModel.from_config(tiny_model()["unet"], remat_policy="some")
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="unknown remat_policy 'some'"):
        unet.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1, 5, 32)))
