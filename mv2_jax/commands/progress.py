"""What a command is doing, on stderr: one line as each phase starts (loading a model, compiling
or restoring compiled programs, each stage, writing), a reminder line while a phase runs long,
so the screen is never silent for more than a few seconds, and, asked (`--timings`), the
seconds each phase took."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

TIMING_PREFIX = "timing:"  # the lines `--timings` adds; benchmarks/first_run.py reads them


class Progress:
    """`progress(line)` starts a phase and prints `line`; `progress.finish()` ends the last one
    (and prints the timings when asked). `started` is the process's start on
    `time.perf_counter()`'s clock: the time before the first phase is counted as "imports"."""

    def __init__(
        self,
        started: float,
        *,
        timings: bool = False,
        remind_every: float = 4.0,
        stream: TextIO | None = None,
    ):
        self.timings = timings
        self.remind_every = remind_every
        self.stream = stream or sys.stderr
        self.phases: list[tuple[str, float]] = [("imports", started)]
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._finished = False
        self._last_line = time.perf_counter()
        self._quiet = False  # the phase shows its own progress bar: no reminders
        self._reminder = threading.Thread(target=self._remind, name="progress", daemon=True)
        self._reminder.start()

    def __call__(self, line: str, *, reminders: bool = True) -> None:
        """Start the phase `line`; `reminders=False` for a phase that draws its own progress
        bar (a reminder line would break it)."""
        with self._lock:
            now = time.perf_counter()
            self._quiet = not reminders
            self.phases.append((line, now))
            self._write(line, now)
            self._changed.notify()

    def finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            end = time.perf_counter()
            self._changed.notify()
            if self.timings:
                for name, seconds in self.durations(end):
                    self._write(f"{TIMING_PREFIX} {seconds:8.2f} s  {name}", end)
                self._write(f"{TIMING_PREFIX} {end - self.phases[0][1]:8.2f} s  total", end)

    def durations(self, end: float) -> list[tuple[str, float]]:
        """`(phase, seconds)` of every phase so far, the last one ending at `end`."""
        ends = [start for _, start in self.phases[1:]] + [end]
        return [(name, stop - start) for (name, start), stop in zip(self.phases, ends)]

    def _write(self, line: str, now: float) -> None:
        self._last_line = now
        print(line, file=self.stream, flush=True)

    def _remind(self) -> None:
        """A line every `remind_every` seconds of silence, saying what still runs."""
        with self._lock:
            while not self._finished:
                wait = self._last_line + self.remind_every - time.perf_counter()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                name, start = self.phases[-1]
                if len(self.phases) > 1 and not self._quiet:  # "imports" ends at the first
                    now = time.perf_counter()
                    self._write(f"  … still {_brief(name)} ({now - start:.0f} s)", now)
                else:
                    self._last_line = time.perf_counter()


def _brief(line: str) -> str:
    """A phase's line without its stage counter, lower-cased first letter: `[2/4] i2v: …` →
    `i2v: …`."""
    text = line.split("] ", 1)[1] if line.startswith("[") else line
    return text[:1].lower() + text[1:]
