"""A progress bar fed from inside a jitted loop through `jax.debug.callback` (process 0 only).

The compiled program cannot hold a bar of its own: it calls `StepProgress.update(step, call)`
with the traced id of the call it runs for, and the bar that call opened advances. Several
threads may sample through one pipeline at once, each with its own bar.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import jax
import numpy as np
from tqdm.auto import tqdm


class StepProgress:
    """Open bars by call id: `bar` opens one for the duration of a call and yields the id the
    program passes back to `update` after each step."""

    def __init__(self) -> None:
        self._bars: dict[int, tqdm] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @contextmanager
    def bar(self, total: int, enabled: bool, desc: str = "denoising") -> Iterator[np.int32]:
        with self._lock:
            call = next(self._ids) % 2**31
        if not enabled or jax.process_index() != 0:
            yield np.int32(call)
            return
        with tqdm(total=total, desc=desc, unit="step") as bar:
            with self._lock:
                self._bars[call] = bar
            try:
                yield np.int32(call)
            finally:
                with self._lock:
                    del self._bars[call]

    def update(self, step, call) -> None:
        del step
        with self._lock:
            bar = self._bars.get(int(call))
        if bar is not None:
            bar.update(1)
