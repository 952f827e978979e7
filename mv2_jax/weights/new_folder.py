"""Writing a model folder all or nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def check_new_folder(out: str | os.PathLike, action: str = "export") -> Path:
    """`out` as a Path; an error naming `action` (the command) when it exists already. Call it
    before slow work too, so a taken name fails at once."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; {action} into a new folder")
    return out


@contextlib.contextmanager
def new_folder(out: str | os.PathLike, action: str = "export") -> Iterator[Path]:
    """Yield an empty `out.partial` to write into; renamed to `out` when the block finishes, so
    a crash leaves only the `.partial` folder (emptied by the next attempt). `out` must not exist
    (`action` names the command in the error)."""
    out = check_new_folder(out, action)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    partial.rename(out)
