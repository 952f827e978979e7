"""What the trainer asks of a training stage, as one `typing.Protocol`, and the check that a
stage class has all of it, made when a run starts (`trainer.stage_class`): a missing or misspelt
hook is an error that names it before anything loads, never a silent fallback."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax


@runtime_checkable
class CountsSkipped(Protocol):
    """A data iterator that counts the records it skipped by reason (`mv2_jax.data`'s
    iterators do); the trainer logs the counts as `skipped/REASON`. Optional: a stage's own
    iterator (VFI's clips made on the fly) skips nothing."""

    @property
    def skipped(self) -> dict[str, int]: ...


@runtime_checkable
class ReadsEma(Protocol):
    """A stage whose loss reads the EMA of the params that train, as
    `consts[mv2_jax.training.step.EMA_CONST]` (the EMA as the step starts, decay
    `config.ema_decay`): consistency distillation's target network (`mv2_jax.training.lcd`).
    Optional: the trainer passes the EMA only to a stage whose `reads_ema` is True."""

    reads_ema: ClassVar[bool]


class TrainingStage(Protocol):
    """A stage of `mv2_jax.training.trainer` (`t2i.py`, `i2v.py`, `v2v.py`, `vfi.py`, `vae.py`,
    `clip.py`; the shared parts in `stage.py`)."""

    needs_pipeline: ClassVar[bool]  # starts from a pipeline folder (config.model.pipeline / init)
    uses_config_data: ClassVar[bool]  # reads config.data (checked at start-up) or makes its own
    param_dtype: Any  # the storage dtype of the params that train (param_shapes has each one's)
    consts: dict  # frozen arrays the loss reads (replicated over the mesh)

    @classmethod
    def from_config(
        cls, config, pipeline: Path | None, mesh, workdir: Path | None = None
    ) -> TrainingStage:
        """The stage of `config`; `pipeline` is the folder it starts from (None unless
        `needs_pipeline`); `workdir` the run's folder, for files a stage keeps there."""
        ...

    def param_shapes(self) -> dict:
        """The tree of the params that train (frozen parts too), as `jax.ShapeDtypeStruct`s in
        their storage dtypes."""
        ...

    def param_shardings(self, mesh, rules) -> dict:
        """A sharding per param, from the logical-axis `rules`."""
        ...

    def load_params(self, shardings) -> dict:
        """The params a fresh run starts from, each placed on its shards."""
        ...

    def trainable_patterns(self, patterns) -> tuple[str, ...]:
        """The `config.trainable` globs this stage uses."""
        ...

    def make_data_iterator(self, config) -> Iterator[dict]:
        """The endless, checkpointable stream of host batches: `config.data`'s, or the stage's
        own (`uses_config_data = False`)."""
        ...

    def prepare(self, batch: dict) -> dict:
        """A host batch of the iterator → the numpy arrays the loss reads."""
        ...

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """(scalar loss, metrics) of one (micro-)batch, one PRNG key per example."""
        ...


def contract_members(protocol: type = TrainingStage) -> tuple[str, ...]:
    """The names `protocol` declares: its annotated attributes, then its methods."""
    names = list(vars(protocol).get("__annotations__", {}))
    for name, value in vars(protocol).items():
        if not name.startswith("_") and (callable(value) or isinstance(value, classmethod)):
            names.append(name)
    return tuple(names)


def missing_members(cls: type, protocol: type = TrainingStage) -> list[str]:
    """The members of `protocol` that `cls` neither defines (on itself or a base) nor declares
    as a dataclass field (instance attributes set at construction)."""
    fields = getattr(cls, "__dataclass_fields__", {})
    return [name for name in contract_members(protocol) if not hasattr(cls, name)
            and name not in fields]  # fmt: skip


def check_stage_class(cls: type, name: str) -> type:
    """`cls` if it has every member of `TrainingStage`, else a TypeError that lists the ones it
    lacks (with the near-miss names it has instead, e.g. a misspelt hook)."""
    missing = missing_members(cls)
    if not missing:
        return cls
    own = [n for n in dir(cls) if not n.startswith("_")]
    lines = []
    for member in missing:
        near = difflib.get_close_matches(member, own, n=1, cutoff=0.8)
        lines.append(f"{member} (it has {near[0]!r}: misspelt?)" if near else member)
    raise TypeError(
        f"stage {name!r} ({cls.__module__}.{cls.__qualname__}) lacks "
        f"{', '.join(lines)}: every stage declares all of mv2_jax.training.stage_contract."
        "TrainingStage"
    )
