"""Kernels XLA cannot partition, run shard by shard on the current mesh.

A Pallas call (splash attention) is an opaque custom call to XLA's partitioner: given sharded
inputs, XLA gathers them whole onto every device and each device runs the whole kernel. Wrapped
in `jax.shard_map` over the mesh axes that the rules give its leading dims (for attention the
batch and the heads), each device runs the kernel on its own shard instead, with no gather.
The mesh is the one `jax.set_mesh` made current, as for `sharding.constrain`; outside one the
kernel runs as it is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import AxisType, PartitionSpec

from mv2_jax.parallel.rules import DEFAULT_RULES, Rules, rule_table
from mv2_jax.parallel.sharding import mesh_spec

log = logging.getLogger(__name__)


_warned: set[tuple[str, str]] = set()  # (kernel, unused axes) already logged


def warn_unsplit(kernel: str, axes: str, example: str) -> None:
    """Logs once per kernel and set of unused axes (not per shape: a UNet meets many)."""
    if (kernel, axes) in _warned:
        return
    _warned.add((kernel, axes))
    log.warning(
        "%s leaves the mesh axes %s unused (first seen with %s, which they do not divide): "
        "the devices along them each run the kernel on the same shard",
        kernel,
        axes,
        example,
    )


def shard_kernel(
    kernel: Callable[..., jax.Array],
    arrays: Sequence[jax.Array],
    logical: Sequence[str],
    *,
    name: str,
    rules: Rules = DEFAULT_RULES,
) -> jax.Array:
    """`kernel(*arrays)` with each device running it on its own shards of `arrays`.

    The arrays' leading dims (alike in all of them) are named `logical`, e.g. `("video_rows",
    "heads")` for attention's `[B, H, L, D]`; the kernel must treat those dims independently
    and return them unchanged in its output, which comes back split the same way. The other
    dims stay whole on each device. A dim that an axis does not divide is left whole along that
    axis (logged once, under `name`): its devices then run the kernel on the same shard."""
    spec = _spec(arrays[0].shape, logical, name, rules)
    if spec is None:
        return kernel(*arrays)
    # check_vma=False: Pallas kernels declare no per-axis variance of their outputs (splash's
    # fail shard_map's check). jit: called eagerly, shard_map would run the kernel op by op.
    sharded = jax.shard_map(kernel, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False)
    return jax.jit(sharded)(*arrays)


def _spec(
    shape: Sequence[int], logical: Sequence[str], name: str, rules: Rules
) -> PartitionSpec | None:
    """The kernel's `PartitionSpec` on the current mesh, or None where nothing splits: no mesh
    is current, its axes are already manual (inside a `shard_map`), or no wanted axis divides
    its dim."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or AxisType.Manual in tuple(mesh.axis_types):
        return None
    table = rule_table(rules)
    wanted = [axis for dim in logical for axis in table.get(dim, ()) if mesh.shape[axis] > 1]
    spec = _placed_leftovers(mesh_spec(logical, shape, mesh, rules), shape, len(logical), wanted)
    used = {axis for entry in spec for axis in _axes(entry)}
    if set(wanted) - used:
        axes = ", ".join(f"{axis}={mesh.shape[axis]}" for axis in sorted(set(wanted) - used))
        dims = ", ".join(f"{dim}={size}" for dim, size in zip(logical, shape, strict=False))
        warn_unsplit(name, axes, dims)
    return spec if used else None


def _placed_leftovers(
    spec: PartitionSpec, shape: Sequence[int], leading: int, wanted: Sequence[str]
) -> PartitionSpec:
    """`spec` with each `wanted` axis that its own dim could not take put on another of the
    `leading` dims that it divides: the kernel treats its leading dims alike, so any of them
    may carry any axis. E.g. the 9×9 level of a 576² video's temporal attention has 32 × 81 =
    2,592 rows, which data:8 × fsdp:4 divide but × frames:2 does not: the heads (8) take
    `frames`, where leaving it unused ran the kernel twice over and summed its gradients over
    `frames` (benchmarks/plan.py, issue 23)."""
    mesh = jax.sharding.get_abstract_mesh()
    entries = [list(_axes(entry)) for entry in spec]
    entries += [[] for _ in range(leading - len(entries))]
    for axis in wanted:
        if any(axis in entry for entry in entries):
            continue
        for dim, entry in enumerate(entries):
            if shape[dim] % (math.prod(mesh.shape[a] for a in entry) * mesh.shape[axis]) == 0:
                entry.append(axis)
                break
    return PartitionSpec(*[None if not e else e[0] if len(e) == 1 else tuple(e) for e in entries])


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
