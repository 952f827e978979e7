"""How every command runs, from parsed flags to exit code: the flags become a frozen settings
object, its cheap checks run before anything loads, then the run itself, with progress lines
on stderr, Ctrl-C guarded (`interrupt.py`) and the errors a user can fix reported in one line
each: a UsageError as `PROG: error: …` (exit 2), `RUN_ERRORS` as `error: …` (exit 1)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mv2_jax.commands.common import (
    RUN_ERRORS,
    UsageError,
    program_caches,
    say,
    use_compilation_cache,
)
from mv2_jax.commands.interrupt import InterruptGuard
from mv2_jax.commands.malloc import keep_freed_memory
from mv2_jax.commands.progress import Progress


@dataclass(frozen=True)
class Session:
    """What a run reports to and writes through, and the command line that started it."""

    progress: Callable[[str], None]
    guard: InterruptGuard
    argv: tuple[str, ...]


class Command(Protocol):
    """A subcommand module: its flags' settings, their checks, and the run."""

    def settings(self, args: argparse.Namespace) -> Any: ...

    def check(self, flags: Any) -> None: ...

    def run(self, flags: Any, session: Session) -> int: ...


def run_command(
    prog: str,
    command: Command,
    args: argparse.Namespace,
    argv,
    started: float,
    *,
    watch_interrupts: bool = True,
) -> int:
    """`command` on the parsed `args`: exit code 0, 1 (a run error) or 2 (a usage error);
    Ctrl-C ends the process with 130 (`interrupt.py`; `watch_interrupts=False` leaves the
    KeyboardInterrupt to the command)."""
    try:
        flags = command.settings(args)
        command.check(flags)
    except UsageError as e:
        _report_usage(prog, e)
        return 2
    runtime = flags.runtime
    progress = Progress(started, timings=runtime.timings)
    keep_freed_memory()  # a process that samples reuses its freed buffers (malloc.py)
    try:
        with (
            InterruptGuard(watch=watch_interrupts) as guard,
            program_caches(runtime.compilation_cache),
        ):
            use_compilation_cache(runtime.compilation_cache)
            return command.run(flags, Session(progress, guard, tuple(argv)))
    except UsageError as e:  # found only once an input is read (e.g. a one-frame video)
        _report_usage(prog, e)
        return 2
    except RUN_ERRORS as e:
        say(f"error: {e}")
        return 1
    finally:
        progress.finish()


def _report_usage(prog: str, error: UsageError) -> None:
    for line in str(error).splitlines():
        say(f"{prog}: error: {line}")
