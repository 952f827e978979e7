"""Device meshes with the four axes every rule in `mv2_jax.parallel.rules` may name:
`data` (batch), `fsdp` (batch and param shards), `tensor` (heads / MLP) and `frames` (video
frames, sequence parallelism). Axes a run does not use have size 1."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor", "frames")


def parse_mesh_spec(spec: str | Mapping[str, int] | None) -> dict[str, int]:
    """`"data:2,fsdp:4"` (the command-line form) or `{"data": 2, "fsdp": 4}` → a dict of sizes
    for the named axes; sizes are positive or -1 ("the remaining devices")."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        sizes: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, size = (s.strip() for s in item.partition(":"))
            if not sep:
                raise ValueError(f"mesh spec {spec!r}: {item!r} is not `axis:size`")
            if name in sizes:
                raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
            try:
                sizes[name] = int(size)
            except ValueError:
                raise ValueError(f"mesh spec {spec!r}: size {size!r} is not an integer") from None
    else:
        sizes = dict(spec)
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh spec {spec!r}: unknown axes {unknown}; known: {list(MESH_AXES)}")
    for name, size in sizes.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh spec {spec!r}: {name} size {size!r} is not ≥ 1 or -1")
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"mesh spec {spec!r}: only one axis may take the remaining devices (-1)")
    return sizes


def make_mesh(
    spec: str | Mapping[str, int] | None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over `devices` (default: all) with axes `MESH_AXES`, all `AxisType.Auto`.

    `spec` names the sizes of some axes (missing ones are 1; one size may be -1 for the rest of
    the devices). The sizes must multiply to the device count: a mesh never silently leaves
    devices idle."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec)
    known = math.prod(size for size in sizes.values() if size != -1)
    for name, size in sizes.items():
        if size == -1:
            if len(devices) % known:
                raise ValueError(
                    f"mesh spec {spec!r}: the other axes ({known}) do not divide the "
                    f"{len(devices)} devices, so {name}=-1 has no size"
                )
            sizes[name] = len(devices) // known
    shape = tuple(sizes.get(name, 1) for name in MESH_AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh spec {spec!r} has {math.prod(shape)} devices "
            f"({', '.join(f'{n}={s}' for n, s in zip(MESH_AXES, shape))}) but there are "
            f"{len(devices)}; make the sizes multiply to {len(devices)} or use -1 for one axis"
        )
    # Auto axes: the compiler propagates shardings (newer jax defaults make_mesh to Explicit).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices)


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
    """A mesh of one device (default: the first) with all four axes of size 1."""
    return make_mesh(None, [device or jax.devices()[0]])
