"""Trainable LoRA factors as extra leaves of a param tree, beside the kernel they adapt:
`…/to_q/kernel` gains `…/to_q/lora_down` and `…/to_q/lora_up`, in the kernel's Flax layout —
Dense `[in, out]` → down `[in, r]`, up `[r, out]`; convolution `[kh, kw, in, out]` → down
`[kh, kw, in, r]`, up `[r, out]` (LoCon) — so that

    W_eff = W + (alpha / rank) · down @ up          (Hu et al. 2021, eq. 3; contracted over r)

`fuse_lora_leaves` gives the tree the model reads (every adapted kernel replaced by W_eff, the
factors gone), so any model trains a LoRA unchanged and gradients reach only the factors.
`side_path_leaves` gives the tree a training loss reads: Dense kernels keep W and their factors
(the layer adds `x down up` itself, `mv2_jax.models.layers.Dense`, so that only the factors'
gradients are summed over the mesh), convolution kernels fused.
`up` starts at zero (step 0 is the base model), `down` uniform in ±1/√fan_in (peft's
kaiming-uniform with a = √5).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.models.layers import LORA_DOWN as DOWN
from mv2_jax.models.layers import LORA_SCALE as SCALE
from mv2_jax.models.layers import LORA_UP as UP

Path = tuple[str, ...]


def lora_targets(shapes: Mapping, patterns: Sequence[str]) -> dict[Path, tuple[int, ...]]:
    """`{module path: kernel shape}` of the Dense (2-D) and convolution (4-D) kernels whose
    module's `/`-joined path matches a glob of `patterns` (`*/attn1/to_q`,
    `unet/*motion_modules_*/to_v`). A pattern that matches no kernel is an error: a typo would
    otherwise train nothing."""
    kernels = {
        path[:-1]: tuple(leaf.shape)
        for path, leaf in traverse_util.flatten_dict(dict(shapes)).items()
        if path[-1] == "kernel" and len(leaf.shape) in (2, 4)
    }
    names = {"/".join(module): module for module in kernels}
    unused = [p for p in patterns if not fnmatch.filter(names, p)]
    if unused:
        example = ", ".join(list(names)[:3])
        raise ValueError(
            f"config.model.lora.targets {unused} match no Dense or convolution kernel; module "
            f"paths look like: {example}, …"
        )
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return {names[n]: kernels[names[n]] for n in sorted(chosen)}


def factor_shapes(kernel: tuple[int, ...], rank: int) -> tuple[tuple, tuple]:
    """(down, up) shapes of a rank-`rank` LoRA of a kernel of shape `kernel`."""
    return (*kernel[:-1], rank), (rank, kernel[-1])


def lora_leaf_shapes(targets: Mapping[Path, tuple], rank: int, dtype=jnp.float32) -> dict:
    """The factors of `targets` as a nested dict of `jax.ShapeDtypeStruct`s."""
    flat = {}
    for module, kernel in targets.items():
        down, up = factor_shapes(kernel, rank)
        flat[(*module, DOWN)] = jax.ShapeDtypeStruct(down, dtype)
        flat[(*module, UP)] = jax.ShapeDtypeStruct(up, dtype)
    return traverse_util.unflatten_dict(flat)


def lora_leaf_shardings(targets: Mapping[Path, tuple], kernel_shardings: Mapping) -> dict:
    """Each factor sharded as its kernel's dims it keeps (down: the input dims, up: the output
    dim); the rank dim is replicated."""
    flat_shardings = traverse_util.flatten_dict(dict(kernel_shardings))
    flat = {}
    for module, kernel in targets.items():
        sharding = flat_shardings[(*module, "kernel")]
        spec = tuple(sharding.spec) + (None,) * (len(kernel) - len(sharding.spec))
        mesh = sharding.mesh
        flat[(*module, DOWN)] = NamedSharding(mesh, PartitionSpec(*spec[:-1], None))
        flat[(*module, UP)] = NamedSharding(mesh, PartitionSpec(None, spec[-1]))
    return traverse_util.unflatten_dict(flat)


def init_lora_leaves(targets: Mapping[Path, tuple], rank: int, key: jax.Array) -> dict:
    """Fresh fp32 factors (traceable; jit it with `out_shardings`): down uniform in
    ±1/√fan_in, fan_in = the kernel's input size times its window; up zero."""
    flat = {}
    for i, (module, kernel) in enumerate(targets.items()):
        down, up = factor_shapes(kernel, rank)
        bound = 1.0 / math.sqrt(math.prod(down[:-1]))
        flat[(*module, DOWN)] = jax.random.uniform(
            jax.random.fold_in(key, i), down, jnp.float32, -bound, bound
        )
        flat[(*module, UP)] = jnp.zeros(up, jnp.float32)
    return traverse_util.unflatten_dict(flat)


def lora_delta(down: jax.Array, up: jax.Array, multiplier: float) -> jax.Array:
    """`multiplier · down @ up` in the kernel's layout, fp32."""
    product = jnp.tensordot(
        down.astype(jnp.float32),
        up.astype(jnp.float32),
        axes=1,
        precision=jax.lax.Precision.HIGHEST,
    )
    return multiplier * product


def fuse_lora_leaves(params: Mapping, multiplier: float, cast: bool = False) -> dict:
    """`params` without its LoRA leaves, each adapted kernel replaced by
    `W + multiplier · down @ up`: in fp32 (what the training loss reads: exact at step 0, and
    the gradient of a bf16-stored base reaches the factors in full precision), or cast back to
    W's dtype (`cast`: what an export writes)."""
    flat = traverse_util.flatten_dict(dict(params))
    out = {p: v for p, v in flat.items() if p[-1] not in (DOWN, UP)}
    for path, down in flat.items():
        if path[-1] != DOWN:
            continue
        module = path[:-1]
        w = out[(*module, "kernel")]
        fused = w.astype(jnp.float32) + lora_delta(down, flat[(*module, UP)], multiplier)
        out[(*module, "kernel")] = fused.astype(w.dtype) if cast else fused
    return traverse_util.unflatten_dict(out)


def side_path_leaves(params: Mapping, multiplier: float) -> dict:
    """`params` as a LoRA training loss hands them to the model: each adapted Dense kernel
    (2-D) kept as stored, beside its factors and `multiplier` (the layer adds
    `multiplier · (x down) up`: the same output as fusing, but each device contracts its rows
    with the factors before gradients are summed, so the full kernel's gradient never crosses
    devices); each adapted convolution kernel fused in fp32 as `fuse_lora_leaves` does."""
    flat = traverse_util.flatten_dict(dict(params))
    out = dict(flat)
    for path, down in flat.items():
        if path[-1] != DOWN:
            continue
        module = path[:-1]
        w = flat[(*module, "kernel")]
        if w.ndim == 2:
            out[(*module, SCALE)] = jnp.float32(multiplier)
            continue
        up = out.pop((*module, UP))
        del out[path]
        out[(*module, "kernel")] = w.astype(jnp.float32) + lora_delta(down, up, multiplier)
    return traverse_util.unflatten_dict(out)


def lora_leaves(params: Mapping) -> dict[Path, tuple[Any, Any]]:
    """`{module path: (down, up)}` of the LoRA leaves of `params`."""
    flat = traverse_util.flatten_dict(dict(params))
    return {p[:-1]: (v, flat[(*p[:-1], UP)]) for p, v in flat.items() if p[-1] == DOWN}
