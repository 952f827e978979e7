"""Converted params as orbax checkpoints: `save_params` writes one, `restore_params` reads it back
checked against the model's param shapes and placed straight onto the requested shardings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.safetensors_io import CheckpointFileError

_REFIX = "re-create it with `python convert/to_flax.py`"


def save_params(directory: str | os.PathLike, params: Mapping, *, force: bool = False) -> Path:
    """Write `params` (nested dicts of numpy or jax arrays, sharded ones too) to `directory`,
    which must not exist unless `force`. Returns the absolute path; blocks until written.

    This process writes it alone: no barrier with the other processes of a multi-process run
    (orbax's default save is a collective that every process must enter), so one process may
    write a model folder while the others wait for it. The params are gathered to this host
    first (orbax writes host-local jax arrays in a single-process run only), so they must be
    addressable here: numpy, or jax arrays on this process's devices."""
    directory = Path(directory).absolute()  # orbax wants absolute paths
    if directory.exists() and not force:
        raise FileExistsError(f"{directory}: already exists; delete it or pass force=True")
    this_process = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    with ocp.StandardCheckpointer(multiprocessing_options=this_process) as checkpointer:
        checkpointer.save(directory, jax.device_get(dict(params)), force=force)
        checkpointer.wait_until_finished()
    return directory


def stored_shapes(directory: str | os.PathLike) -> dict[tuple[str, ...], Any]:
    """Flat `{path: array metadata (.shape, .dtype)}` of an orbax checkpoint, read from its
    metadata only (no tensor data)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint folder; {_REFIX}")
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            meta = checkpointer.metadata(directory)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointFileError(
                f"{directory}: not a readable orbax checkpoint ({e}); {_REFIX}"
            ) from e
    # orbax ≥ 0.11 returns StepMetadata → TreeMetadata → .tree; older ones the tree itself.
    item = getattr(meta, "item_metadata", meta)
    tree = getattr(item, "tree", item)
    if not isinstance(tree, Mapping) or not tree:
        raise CheckpointFileError(
            f"{directory}: no orbax params found (an interrupted conversion?); {_REFIX}"
        )
    return traverse_util.flatten_dict(dict(tree))


def restore_params(
    directory: str | os.PathLike,
    shapes: Mapping,
    dtype=None,
    shardings: Mapping | jax.sharding.Sharding | None = None,
) -> dict:
    """Restore the params saved by `save_params`.

    `shapes`: the expected tree (`registry.param_shapes`); a checkpoint that does not match it
    raises `WeightMismatchError` listing the differences (orbax refuses it before any tensor
    is placed). `dtype`: cast on read (default: each
    param's dtype in `shapes`). `shardings`: a tree like `shapes` or one sharding for all params;
    each process reads only its shards, so full params never sit on one device. None puts
    everything on the default device."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint folder; {_REFIX}")
    expected = traverse_util.flatten_dict(dict(shapes))
    placement = flat_shardings(shardings, shapes)
    target = {
        path: jax.ShapeDtypeStruct(tuple(spec.shape), dtype or spec.dtype, sharding=placement[path])
        for path, spec in expected.items()
    }
    # Restore at once (orbax itself refuses a different tree or shape); only when it fails read
    # the stored metadata to say what differs: reading it first cost a third of every load.
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            return checkpointer.restore(directory, traverse_util.unflatten_dict(target))
        except Exception as e:  # tensorstore raises bare Exceptions for damaged data files
            _raise_mismatch(directory, expected)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointFileError(
                f"{directory}: cannot read the params ({first}); the files are damaged or "
                f"incomplete; {_REFIX}"
            ) from e


def _raise_mismatch(directory: Path, expected: Mapping) -> None:
    """`WeightMismatchError` listing how the checkpoint's params differ from `expected` (flat
    `{path: spec}`), if they do."""
    stored = stored_shapes(directory)
    missing = ["/".join(p) for p in expected if p not in stored]
    unexpected = ["/".join(p) for p in stored if p not in expected]
    misshaped = [
        ("/".join(p), tuple(stored[p].shape), tuple(expected[p].shape))
        for p in expected
        if p in stored and tuple(stored[p].shape) != tuple(expected[p].shape)
    ]
    if missing or unexpected or misshaped:
        raise WeightMismatchError(
            str(directory),
            missing,
            unexpected,
            misshaped,
            hint="  These params were converted for another config.json; convert the weights "
            "again with `python convert/to_flax.py` next to the config they belong to.",
        )


def flat_shardings(shardings, shapes: Mapping) -> dict[tuple[str, ...], jax.sharding.Sharding]:
    """`{param path: sharding}` for every param of `shapes`, from a tree of shardings shaped like
    it, one sharding for all, or None (the default device)."""
    expected = traverse_util.flatten_dict(dict(shapes))
    if shardings is None:
        shardings = jax.sharding.SingleDeviceSharding(_default_device())
    if isinstance(shardings, jax.sharding.Sharding):
        return dict.fromkeys(expected, shardings)
    flat = traverse_util.flatten_dict(dict(shardings))
    absent = [p for p in expected if p not in flat]
    if absent:
        raise ValueError(
            f"shardings has no entry for {len(absent)} params, e.g. {'/'.join(absent[0])}; "
            "give a tree shaped like the params or a single sharding"
        )
    return flat


def _default_device() -> jax.Device:
    device = jax.config.jax_default_device
    return device if isinstance(device, jax.Device) else jax.devices()[0]
