"""Shardings from logical axis names: params' logical specs (read with `jax.eval_shape`), their
`NamedSharding`s on a mesh, params initialised straight onto the mesh, and input shardings."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mv2_jax.parallel.rules import DEFAULT_RULES, Rules, rule_table


def mesh_spec(
    logical: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> PartitionSpec:
    """The mesh `PartitionSpec` of an array of `shape` whose dims carry `logical` names.

    A mesh axis is used by at most one dim (the largest one it divides, so FSDP splits the
    biggest axis); a dim keeps its axes only while their product divides it, so a dim that does
    not split evenly is replicated instead of failing. Axes of size 1 are left out."""
    logical = tuple(logical or ())
    if len(logical) > len(shape):
        raise ValueError(f"logical axes {logical} have more names than shape {tuple(shape)}")
    table = rule_table(rules)
    wanted = [table.get(name, ()) if name else () for name in logical]
    wanted += [()] * (len(shape) - len(logical))
    owner: dict[str, int] = {}
    for dim, axes in enumerate(wanted):
        for axis in axes:
            if axis not in mesh.shape:
                raise ValueError(f"rules map {logical[dim]!r} to {axis!r}, not a mesh axis")
            if mesh.shape[axis] == 1 or shape[dim] % mesh.shape[axis]:
                continue
            if axis not in owner or shape[dim] > shape[owner[axis]]:
                owner[axis] = dim
    spec = []
    for dim, axes in enumerate(wanted):
        kept: list[str] = []
        for axis in axes:
            if owner.get(axis) == dim and shape[dim] % (_size(mesh, kept) * mesh.shape[axis]) == 0:
                kept.append(axis)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while spec and spec[-1] is None:  # P('fsdp') rather than P('fsdp', None, None)
        spec.pop()
    return PartitionSpec(*spec)


def _size(mesh: Mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[axis] for axis in axes)


def _abstract_variables(module: nn.Module, args: Sequence, kwargs: Mapping | None) -> Any:
    kwargs = dict(kwargs or {})
    return jax.eval_shape(lambda rng: module.init(rng, *args, **kwargs), jax.random.key(0))


def logical_specs(
    module: nn.Module, example_args: Sequence, example_kwargs: Mapping | None = None
) -> dict:
    """The params' logical `PartitionSpec`s (e.g. `P(None, None, 'conv_in', 'conv_out')`),
    traced with `jax.eval_shape(module.init, ...)`: nothing is computed or allocated."""
    return nn.get_partition_spec(_abstract_variables(module, example_args, example_kwargs))[
        "params"
    ]


def param_shardings(shapes: Any, specs: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """A tree of `NamedSharding` like `shapes` (arrays or `ShapeDtypeStruct`s), from the
    logical `specs` of `logical_specs` and the `rules`; see `mesh_spec`."""
    return jax.tree.map(
        lambda shape, spec: NamedSharding(mesh, mesh_spec(spec, shape.shape, mesh, rules)),
        shapes,
        specs,
    )


def shard_params(params: Any, shardings: Any) -> Any:
    """`params` moved onto `shardings` (a tree like them): each device receives its shards."""
    return jax.device_put(params, shardings)


def module_shardings(
    module: nn.Module,
    example_args: Sequence,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    example_kwargs: Mapping | None = None,
) -> dict:
    """The `NamedSharding` of every param of `module`, traced from the example inputs."""
    boxed = _abstract_variables(module, example_args, example_kwargs)["params"]
    return param_shardings(nn.meta.unbox(boxed), nn.get_partition_spec(boxed), mesh, rules)


def sharded_init(
    module: nn.Module,
    example_args: Sequence,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    example_kwargs: Mapping | None = None,
) -> Callable[[jax.Array], dict]:
    """The jitted `rng → params` of `init_sharded` (to `.lower(rng).compile()` it and read its
    memory analysis, or to call it with several keys)."""
    kwargs = dict(example_kwargs or {})
    shardings = module_shardings(module, example_args, mesh, rules, kwargs)

    def init(rng):
        return nn.meta.unbox(module.init(rng, *example_args, **kwargs)["params"])

    return jax.jit(init, out_shardings=shardings)


def init_sharded(
    module: nn.Module,
    rng: jax.Array,
    example_args: Sequence,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    example_kwargs: Mapping | None = None,
) -> dict:
    """`module.init(rng, *example_args, **example_kwargs)["params"]`, created shard by shard on
    `mesh`: the shardings come from `jax.eval_shape`, and `jit(out_shardings=...)` has every
    device compute only its own shards, so the full params never sit on one device. The
    example inputs are baked into the compiled init as constants: keep them small."""
    return sharded_init(module, example_args, mesh, rules, example_kwargs)(rng)


def batch_sharding(
    mesh: Mesh,
    ndim: int,
    *,
    frames: bool = False,
    shape: Sequence[int] | None = None,
    rules: Rules = DEFAULT_RULES,
) -> NamedSharding:
    """Sharding of an input batch `[B, ...]` (or a video `[B, F, ...]` when `frames`): B over
    the `batch` rule's axes (`data` × `fsdp`), F over `frames`, the rest replicated. Given the
    `shape`, axes that do not divide B or F are dropped (replicated) instead of failing."""
    logical = ("batch", "frames") if frames else ("batch",)
    if ndim < len(logical):
        raise ValueError(f"a {ndim}-d input has no {' and '.join(logical)} axes")
    if shape is None:  # no divisibility to check: as if every dim were divisible by the mesh
        shape = (mesh.size,) * ndim
    elif len(shape) != ndim:
        raise ValueError(f"shape {tuple(shape)} is not {ndim}-d")
    return NamedSharding(mesh, mesh_spec(logical, shape, mesh, rules))


def constrain(x: jax.Array, logical: Sequence[str | None], rules: Rules = DEFAULT_RULES):
    """`x` held to the sharding its dims' logical names give on the mesh that `jax.set_mesh`
    made current (outside one, `x` unchanged). Models use it where an activation changes
    layout, e.g. video frames folded into the batch and then pixels into it for temporal
    attention, so that the compiler keeps the work split instead of gathering it."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, mesh_spec(logical, x.shape, mesh, rules))


def per_device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes each device holds of the arrays in `tree` (a replicated array counts on every
    device that has a copy)."""
    totals: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


def component_shardings(path: str | os.PathLike, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """The param shardings of the component folder at `path` (diffusers / transformers
    `config.json`), for `load_component(path, shardings=...)`; only shapes are traced."""
    from mv2_jax.weights.load import build_module, read_config

    module, _ = build_module(read_config(path), where=str(path))
    return module_shardings_for(module, mesh, rules)


def module_shardings_for(module: nn.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """The param shardings of a component model (any family `load_component` knows)."""
    from mv2_jax.weights.registry import family_of

    args, kwargs = family_of(module).example_inputs(module)
    return module_shardings(module, args, mesh, rules, kwargs)
