"""A LoRA as the training loss hands it to the model (`side_path_leaves`: Dense layers add
`scale · (x down) up` themselves, convolutions fused) gives the fused model's outputs and the
same gradients of the factors, for every model family a LoRA stage trains, with every Dense and
convolution kernel adapted (so a layer that ignored its factors would show); and on a mesh only
the factors' gradients cross devices (issue 23: the fused kernel's gradient had been summed at
full size)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.core import meta

from mv2_jax.lora.leaves import (
    DOWN,
    SCALE,
    UP,
    fuse_lora_leaves,
    init_lora_leaves,
    lora_targets,
    side_path_leaves,
)
from mv2_jax.training.optim import merge_params, split_params
from tests.models.test_bf16 import FAMILIES, norm_error, random_params

MULTIPLIER = 0.75
pytestmark = pytest.mark.slow


def adapted_params(family, patterns=("*",)):
    """The family's random fp32 params with rank-2 factors on every kernel `patterns` match,
    `up` random too (at zero the side path would add nothing to compare)."""
    inputs = family.inputs(np.random.default_rng(0))
    kw = {} if family.method is None else {"method": family.method}
    init = functools.partial(family.module.init, jax.random.key(0), *inputs, **kw)
    params = random_params(meta.unbox(jax.eval_shape(init)["params"]), seed=1)
    targets = lora_targets(params, patterns)
    factors = init_lora_leaves(targets, 2, jax.random.key(2))
    flat = traverse_util.flatten_dict(factors)
    for i, path in enumerate(p for p in flat if p[-1] == UP):
        flat[path] = 0.3 * jax.random.normal(jax.random.key(100 + i), flat[path].shape)
    factors = traverse_util.unflatten_dict(flat)
    return merge_params(factors, params), targets, inputs, kw


@pytest.mark.parametrize("name", ["sd15_unet", "sdxl_unet", "motion_unet", "clip_text"])
def test_side_path_equals_the_fused_kernel(name):
    family = FAMILIES[name]
    params, targets, inputs, kw = adapted_params(family)
    assert any(len(shape) == 4 for shape in targets.values()) or name == "clip_text"
    paths = [(*module, leaf) for module in targets for leaf in (DOWN, UP)]

    def loss(factors, frozen, arrange):
        tree = arrange(merge_params(factors, frozen), MULTIPLIER)
        out = family.outputs(family.module.apply({"params": tree}, *inputs, **kw))
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(out)), out

    factors, frozen = split_params(params, paths)
    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=2)
    fused_grads, fused_out = grad(factors, frozen, fuse_lora_leaves)
    side_grads, side_out = grad(factors, frozen, side_path_leaves)
    base_out = family.outputs(family.module.apply({"params": frozen}, *inputs, **kw))
    assert norm_error(fused_out, base_out) > 1e-2  # the LoRA changes the output
    assert norm_error(side_out, fused_out) < 1e-5
    assert norm_error(side_grads, fused_grads) < 1e-5


def test_side_path_keeps_dense_kernels_and_fuses_convolutions():
    params, targets, _, _ = adapted_params(FAMILIES["sd15_unet"])
    flat = traverse_util.flatten_dict(side_path_leaves(params, MULTIPLIER))
    original = traverse_util.flatten_dict(params)
    dense = [m for m, shape in targets.items() if len(shape) == 2]
    convolutions = [m for m, shape in targets.items() if len(shape) == 4]
    assert dense and convolutions
    for module in dense:
        assert flat[(*module, "kernel")] is original[(*module, "kernel")]
        assert float(flat[(*module, SCALE)]) == MULTIPLIER
        assert (*module, DOWN) in flat and (*module, UP) in flat
    for module in convolutions:
        assert (*module, DOWN) not in flat and (*module, SCALE) not in flat
        fused = fuse_lora_leaves(params, MULTIPLIER)
        np.testing.assert_array_equal(
            flat[(*module, "kernel")], traverse_util.flatten_dict(fused)[(*module, "kernel")]
        )
