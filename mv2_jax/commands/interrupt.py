"""Ctrl-C during a command: one line, exit status 130, no output file left half-written.

A KeyboardInterrupt raised while the main thread is inside a C++ call (XLA compiling or running
a program) is delayed until the call returns, and jax may swallow it. So while an
`InterruptGuard` is active, SIGINT only wakes a watcher thread (`signal.set_wakeup_fd`), which
removes the outputs staged so far, prints "interrupted" and ends the process at once. Outputs are
written to temporary names beside their final ones (`stage`) and renamed together (`commit`);
the watcher and `commit` take the same lock, so a run is either interrupted before its outputs
exist or finishes writing them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report it


def exit_interrupted() -> None:
    """The one line, then the exit (no cleanup handlers: they could block on a busy jax)."""
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_EXIT_CODE)


class InterruptGuard:
    """`with InterruptGuard() as guard:` — SIGINT ends the process (see the module docstring);
    `guard.stage(path)` gives the temporary name to write `path` under, `guard.commit()` renames
    every staged file to its final name. On leaving, staged files not committed are removed."""

    def __init__(self, watch: bool = True):
        self.watch = watch  # False: outputs are staged, but Ctrl-C is the caller's to handle
        self._lock = threading.Lock()
        self._staged: dict[Path, Path] = {}  # temporary → final
        self._created: list[Path] = []  # folders made for staged files, innermost last

    def __enter__(self) -> InterruptGuard:
        if not self.watch:
            return self
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        self._write = write
        self._old_wakeup = signal.set_wakeup_fd(write)
        # The handler does nothing: the main thread must not raise where jax could swallow it.
        self._old_handler = signal.signal(signal.SIGINT, lambda signum, frame: None)
        self._watcher = threading.Thread(target=self._watch, name="interrupt", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.watch:
            signal.signal(signal.SIGINT, self._old_handler)
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._write)  # the watcher reads end-of-file and returns
            self._watcher.join()
            os.close(self._read)
        with self._lock:
            self._discard()

    def stage(self, final: str | os.PathLike) -> Path:
        """Where to write `final` for now: a hidden name in the same folder, same suffix (the
        writers choose the format by it). The folder is made if missing."""
        final = Path(final)
        missing = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.stem}-partial-{os.getpid()}{final.suffix}")
        with self._lock:
            self._created += [p for p in reversed(missing) if p not in self._created]
            self._staged[temporary] = final
        return temporary

    def commit(self) -> None:
        """Every staged output to its final name (an empty folder there is replaced)."""
        with self._lock:
            for temporary, final in self._staged.items():
                if final.is_dir() and not any(final.iterdir()):
                    final.rmdir()
                os.replace(temporary, final)
            self._staged.clear()
            self._created.clear()

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            if signal.SIGINT in data:
                with self._lock:  # a commit under way finishes first
                    self._discard()
                    exit_interrupted()

    def _discard(self) -> None:
        for temporary in self._staged:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
        self._staged.clear()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        self._created.clear()
