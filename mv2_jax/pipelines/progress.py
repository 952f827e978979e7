"""A progress bar fed from inside a jitted loop through `jax.debug.callback` (process 0 only)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import jax
from tqdm.auto import tqdm


class StepProgress:
    """`update` is the (static) callback the compiled loop calls after each step; `bar` opens
    the bar that those calls advance, for the duration of one pipeline call."""

    def __init__(self) -> None:
        self._bar = None

    @contextmanager
    def bar(self, total: int, enabled: bool, desc: str = "denoising") -> Iterator[None]:
        if not enabled or jax.process_index() != 0:
            yield
            return
        with tqdm(total=total, desc=desc, unit="step") as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def update(self, step) -> None:
        del step
        if self._bar is not None:
            self._bar.update(1)
