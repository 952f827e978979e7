"""Checkpoints of a run under `WORKDIR/checkpoints/<step>/`: orbax `CheckpointManager` (async
saves, the newest N kept, sharded restore straight onto the mesh) with four items:

- `params`: the trained model's params (all of them, frozen ones too);
- `ema`: the EMA of the trainable params;
- `train`: step, optimizer state and the run's PRNG key;
- `data`: each process's input-iterator state (grain's per-process JSON files);
- `meta`: what model this is (param paths and shapes) and the config, to refuse a checkpoint
  of another model with an error that names the difference.

A step directory appears only once all items are written, so a run killed mid-save resumes
from the previous checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mv2_jax.training.optim import merge_params


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def array_type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
    """orbax's default type handlers, but for `jax.Array`s one that splits only arrays of ≥ 1 MiB
    per slice among their replicas for writing: for the many small arrays of a UNet the slicing
    costs more than it saves (3× slower saves measured on 8 CPU devices). A registry of this
    module's own, handed to its checkpoint handlers: orbax's global registry stays as it is."""
    defaults = ocp.type_handlers.supported_types()
    whole = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=2**20)
    return ocp.type_handlers.create_type_handler_registry(
        *((t, ocp.type_handlers.get_type_handler(t)) for t in defaults), (jax.Array, whole)
    )


def make_manager(workdir, keep: int = 3, save_every: int = 1) -> ocp.CheckpointManager:
    # The step's item folders are made before any item is written: orbax otherwise makes them
    # in the background while grain's (synchronous) handler already writes its per-process
    # file, and on a loaded machine process 1 wrote before process 0 had made the folder
    # (ENOENT), then both aborted at jax's shutdown barrier (issue 18 item 8).
    folders_first = ocp.AsyncOptions(create_directories_asynchronously=False)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=save_every,
        enable_async_checkpointing=True,
        async_options=folders_first,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_handlers=_item_handlers()
    )


def _item_handlers() -> dict:
    registry = array_type_handlers()

    def arrays():  # what StandardCheckpointHandler does, with the registry above
        return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)

    return {
        "params": arrays(),
        "ema": arrays(),
        "train": arrays(),
        "data": grain.checkpoint.CheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


def _restore_arrays(abstract) -> ocp.args.PyTreeRestore:
    """Restore onto the shapes, dtypes and shardings of `abstract` (`jax.ShapeDtypeStruct`s)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    return ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args)


def model_signature(params: Any) -> dict[str, list[int]]:
    """`{"/"-joined param path: shape}`: what must match for a checkpoint to fit a model."""
    flat = traverse_util.flatten_dict(params)
    return {"/".join(path): list(np.shape(leaf)) for path, leaf in sorted(flat.items())}


def check_same_model(saved: dict, expected: dict, where: Path) -> None:
    """Raise naming the missing, unexpected and re-shaped params if `saved` ≠ `expected`."""
    if saved == expected:
        return
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [f"{k}: {saved[k]} vs {expected[k]}" for k in expected if k in saved
                and saved[k] != expected[k]]  # fmt: skip
    lines = [f"{where} holds a checkpoint of a different model than this config builds:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped)):
        if items:
            lines.append(f"  {title} ({len(items)}): {', '.join(items[:5])}")
    lines.append("Use a new --workdir for a new model, or the config this run was started with.")
    raise ValueError("\n".join(lines))


def save(manager: ocp.CheckpointManager, state, iterator, meta: dict, force=False) -> bool:
    """Start an async save of `state` at its step; returns whether one was started."""
    step = int(jax.device_get(state.step))
    train = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    return manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.PyTreeSave(state.params),
            ema=ocp.args.PyTreeSave(state.ema),
            train=ocp.args.PyTreeSave(train),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta),
        ),
        force=force,
    )


def restore(manager: ocp.CheckpointManager, abstract_state, iterator, expected_meta: dict):
    """The latest checkpoint's state, restored onto the shardings of `abstract_state` (a
    `TrainState` of `jax.ShapeDtypeStruct`s with `.sharding`), and the iterator set to where
    it was; None if there is none yet."""
    step = manager.latest_step()
    if step is None:
        return None
    where = Path(manager.directory) / str(step)
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_same_model(meta["model"], expected_meta["model"], where)
    train = {
        "step": abstract_state.step,
        "opt_state": abstract_state.opt_state,
        "rng": abstract_state.rng,
    }
    items = manager.restore(
        step,
        args=ocp.args.Composite(
            params=_restore_arrays(abstract_state.params),
            ema=_restore_arrays(abstract_state.ema),
            train=_restore_arrays(train),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    return abstract_state.replace(
        step=items["train"]["step"],
        params=items["params"],
        opt_state=items["train"]["opt_state"],
        ema=items["ema"],
        rng=items["train"]["rng"],
    )


def run_config(workdir: str | os.PathLike, stage: str | None = None):
    """The config a train.py run saved (`WORKDIR/config.json`), checked to be of `stage`."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {workdir} a train.py workdir?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    if stage is not None and config.stage != stage:
        raise ValueError(f"{workdir}: a {config.stage!r} run, not a {stage} run")
    return config


def model_stage(config) -> str:
    """The stage whose model a run's params hold: `config.stage`, or for a reward-gradient run
    the stage it tunes (`reward_gradient.base`, t2i or i2v); DPO and LCD runs keep the tuned
    stage in `config.stage` already."""
    if config.stage == "reward_gradient":
        return config.reward_gradient.base
    return config.stage


def restore_params(workdir: str | os.PathLike, step: int | None = None, ema: bool = False):
    """The trained model's params of a run's checkpoint (the latest unless `step`), as numpy
    arrays on the host; `ema=True` puts the EMA weights in place of the trained ones."""
    directory = checkpoint_dir(workdir)
    none_yet = FileNotFoundError(
        f"{workdir}: no checkpoint yet (none finished in {directory}); train it first "
        f"(python train.py --config CONFIG --workdir {workdir}) or wait for its first "
        "checkpoint (config.checkpoint_every steps)"
    )
    if not directory.is_dir():
        raise none_yet
    with ocp.CheckpointManager(directory, item_handlers=_item_handlers()) as manager:
        steps = manager.all_steps()
        if not steps:
            raise none_yet
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ValueError(f"{directory}: no checkpoint at step {step}; there are {steps}")
        names = ("params", "ema") if ema else ("params",)
        metadata = manager.item_metadata(step)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        targets = {  # one device here, whatever mesh the run was saved from
            name: jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                getattr(metadata[name], "tree", metadata[name]),
            )
            for name in names
        }
        items = manager.restore(
            step,
            args=ocp.args.Composite(**{n: _restore_arrays(targets[n]) for n in names}),
        )
    params = jax.tree.map(np.asarray, items["params"])
    if ema:
        params = merge_params(jax.tree.map(np.asarray, items["ema"]), params)
    return params
