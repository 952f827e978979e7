"""Writing a model folder all or nothing: every writer of a folder that others read (exports,
conversions, the trainer's random-init pipeline, the clip stage's tokenizer) writes it through
`new_folder`, so a folder that exists is complete; `written_once` adds the multi-process rule
(process 0 writes, every process waits for it)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def check_new_folder(out: str | os.PathLike, action: str = "export") -> Path:
    """`out` as a Path; an error naming `action` (the command) when it exists already. Call it
    before slow work too, so a taken name fails at once."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; {action} into a new folder")
    return out


def partial_folder(out: Path) -> Path:
    """Where `new_folder` writes `out` until it is complete: `out.partial`."""
    return out.with_name(out.name + ".partial")


@contextlib.contextmanager
def new_folder(out: str | os.PathLike, action: str = "export") -> Iterator[Path]:
    """Yield an empty `out.partial` to write into; renamed to `out` when the block finishes and
    removed when it raises, so a crash (a killed process) leaves only the `.partial` folder,
    which the next attempt removes with a warning. `out` must not exist (`action` names the
    command in the error)."""
    out = check_new_folder(out, action)
    partial = partial_folder(out)
    if partial.exists():
        log.warning("%s: removing what an interrupted write left; writing it again", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(out)


def written_once(
    out: str | os.PathLike, write: Callable[[Path], object], timeout_s: int = 3600
) -> Path:
    """`out`, made by `write(out)` (a writer that goes through `new_folder`) unless it exists
    already: in a multi-process run by process 0 alone, every process returning once it is
    there. The others wait at a barrier of the coordination service, not a device collective
    (whose set-up times out after 30 s on CPU): a random init can take minutes; if process 0
    fails, the service ends the others."""
    import jax
    import orbax.checkpoint as ocp

    out = Path(out)
    if jax.process_index() == 0 and not out.exists():
        write(out)
    if jax.process_count() > 1:
        barrier = ocp.multihost.get_barrier_sync_fn()
        barrier(key=f"mv2_jax_written_{out.name}", timeout_ms=timeout_s * 1000)
    return out


def write_file_atomically(path: str | os.PathLike, data: bytes | bytearray) -> Path:
    """`path` holding `data`, all or nothing: a temporary file in the same folder (made if
    missing), renamed into place, so a crash never leaves a truncated file under `path`."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
