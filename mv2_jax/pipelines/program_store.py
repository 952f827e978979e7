"""Compiled-program start-up without tracing: each pipeline program, exported once with
`jax.export` (StableHLO, serialised) into a folder, is read back on the next run instead of
tracing the models again.

Why: jax's persistent compilation cache keys a program by its lowered HLO, so even a run whose
every program is cached first traces and lowers every stage (≈ 20 s for the shipped cascade on
2 CPU cores). A stored export skips both: the run deserialises it, wraps it in a small jit (whose
HLO is the same every run, so the compilation cache answers) and calls it with the same
arguments. A program is stored under a digest of everything that shapes it: the pipeline class,
every model's configuration (`repr` of the linen modules), the `Program`, the arguments' shapes
and dtypes, the source of the code that traces it (`code_digest`) and the jax / mv2-jax versions
and backend — a change in any stores a new one.
Programs that report progress (host callbacks) or run on a mesh are not stored. A program not in
the folder is looked for among those shipped with the package (`mv2_jax.traced_ahead`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import jax
from jax import export

import mv2_jax
from mv2_jax.code_digest import source_digest
from mv2_jax.traced_ahead import PROGRAMS
from mv2_jax.weights.new_folder import write_file_atomically

log = logging.getLogger(__name__)


class ProgramStore:
    """A folder of exported programs (`<digest>.jaxexport`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def jitted(self, name: str, parts: tuple, trace: Callable, args: tuple) -> Callable:
        """`jax.jit` of the stored program `digest(name, parts, args)`; exported from
        `jax.jit(trace)` at `args`' shapes and stored first when there is none."""
        file = f"{digest(name, parts, args)}.jaxexport"
        path = self.folder / file
        exported = self._read(path)
        if exported is None:  # the README command's programs ship with the package
            exported = self._read(PROGRAMS / file)
        if exported is None:
            exported = export.export(jax.jit(trace))(*_specs(args))
            write_file_atomically(path, exported.serialize())
        return jax.jit(exported.call)

    def _read(self, path: Path):
        if not path.is_file():
            return None
        try:
            return export.deserialize(bytearray(path.read_bytes()))
        except Exception as e:  # a truncated or foreign file: export again, say so
            log.warning("%s: unreadable stored program (%s); exporting it again", path, e)
            return None


def digest(name: str, parts: tuple, args: tuple) -> str:
    """A stable hex digest of a program's identity (see the module docstring)."""
    leaves, tree = jax.tree.flatten(args)
    avals = [(tuple(x.shape), str(x.dtype)) for x in leaves]
    identity = (
        name,
        parts,
        str(tree),
        avals,
        mv2_jax.__version__,
        source_digest("models", "diffusion", "pipelines", "parallel"),  # the traced code
        jax.__version__,
        jax.default_backend(),
        jax.devices()[0].device_kind,
    )
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:32]


def _specs(args: tuple):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)


_default: ProgramStore | None = None


def use_program_store(folder: str | os.PathLike | None) -> None:
    """Store programs in `folder` for every pipeline without a `program_store` of its own
    (None: stop). For command lines, beside jax's compilation cache; library code never calls
    it."""
    global _default
    _default = None if folder is None else ProgramStore(folder)


def default_program_store() -> ProgramStore | None:
    return _default
