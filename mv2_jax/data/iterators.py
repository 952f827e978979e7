"""The grain machinery shared by the training pipelines: one deterministic global order sharded
over processes, a batcher that skips and counts bad records, and the iterator that alternates
image and video steps. All of it is checkpointable through `get_state` / `set_state`.

Global order. Epoch `e` visits the records in a permutation fixed by `(seed, e)` (grain's
index shuffle), epochs follow each other without end. Process `p` of `P` takes the positions
`p, p + P, p + 2P, …` of that endless sequence, so processes see disjoint records, together
they see the global order, and (without skips) the global batch of step `k` is positions
`[k·B, (k+1)·B)` whatever the process count.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import grain
import numpy as np


def _with_position(position: int, record: int) -> tuple[int, int]:
    return position, record


def sharded_elements(
    num_records: int,
    load: Callable[[tuple[int, int]], dict],
    *,
    seed: int,
    process_index: int,
    process_count: int,
    read_threads: int,
    prefetch_elements: int,
    num_workers: int,
    shuffle: bool = True,
) -> grain.IterDataset:
    """This process's share of the endless global order, each item `(global position, record
    index)` turned into an element by `load` (a picklable callable when `num_workers > 0`).

    Elements are computed by `read_threads` threads ahead of use, or by `num_workers`
    processes (grain's `mp_prefetch`, which keeps the order and the checkpoint state)."""
    if num_records == 0:
        raise ValueError("the dataset has no records")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    order = grain.MapDataset.range(num_records)
    if shuffle:
        order = order.shuffle(seed=seed % 2**32)  # reshuffles each epoch: seed + epoch
    order = order.repeat().map_with_index(_with_position)
    elements = order[process_index::process_count].map(load)
    threads = read_threads if prefetch_elements > 0 else 0
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch_elements)
    stream = elements.to_iter_dataset(options)
    if num_workers > 0:
        _allow_unparsed_absl_flags()
        per_worker = max(1, prefetch_elements // num_workers)
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=per_worker)
        )
    return stream


def _allow_unparsed_absl_flags() -> None:
    """grain's worker processes read absl flags, which fails when the program never parsed
    them (anything not started by `absl.app.run`; google/grain#1355). Their defaults are what
    we want then, so say they were parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _stack(values: list) -> np.ndarray:
    if isinstance(values[0], str):
        return np.array(values, dtype=object)
    return np.stack(values)


class SkippingBatcher(grain.DatasetIterator):
    """Batches of `batch_size` good elements; an element `{"skip": reason}` is dropped and
    counted. Counts are part of the state, so a resumed run reports what the original would.

    Batches: every key of the elements stacked (`[b, ...]`; strings as an object array), plus
    `is_image` bool `[b]`."""

    def __init__(
        self,
        parent: grain.DatasetIterator,
        batch_size: int,
        is_image: bool,
        max_consecutive_skips: int = 1000,
    ):
        super().__init__(parent)
        self._batch_size = batch_size
        self._is_image = is_image
        self._max_consecutive_skips = max_consecutive_skips
        self._skipped: Counter[str] = Counter()

    @property
    def skipped(self) -> dict[str, int]:
        return dict(sorted(self._skipped.items()))

    def __next__(self) -> dict[str, np.ndarray]:
        good: list[dict] = []
        run = 0
        while len(good) < self._batch_size:
            element = next(self._parent)
            if "skip" not in element:
                good.append(element)
                run = 0
                continue
            self._skipped[element["skip"]] += 1
            run += 1
            if run > self._max_consecutive_skips:
                raise RuntimeError(
                    f"{run} records in a row were unusable (counts so far: {self.skipped}); "
                    "the dataset or the pipeline settings look wrong"
                )
        batch = {key: _stack([e[key] for e in good]) for key in good[0]}
        batch["is_image"] = np.full(self._batch_size, self._is_image)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"elements": self._parent.get_state(), "skipped": self.skipped}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["elements"])
        self._skipped = Counter(state["skipped"])


def is_image_step(step: int, image_ratio: float) -> bool:
    """Step `s` is an image step iff `floor((s+1)·r) > floor(s·r)`: a fraction `r` of the
    steps, spread evenly (r = 0.25 → steps 3, 7, 11, …). Exact rational arithmetic, so
    r = 0.1 gives exactly every tenth step."""
    r = Fraction(image_ratio).limit_denominator(1_000_000)
    return (step + 1) * r.numerator // r.denominator > step * r.numerator // r.denominator


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of "
            f"process_count {process_count}"
        )
    return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one process turns a random-access dataset into batches: its share of the global
    order (`sharded_elements`), `read_threads` threads or `num_workers` processes loading
    `prefetch` batches ahead, batched by a `SkippingBatcher` of the per-process batch size."""

    global_batch_size: int
    seed: int = 0
    process_index: int = 0
    process_count: int = 1
    num_workers: int = 0
    prefetch: int = 2
    read_threads: int = 4
    max_consecutive_skips: int = 1000

    @property
    def batch_size(self) -> int:
        return per_process_batch_size(self.global_batch_size, self.process_count)

    def batches(
        self, num_records: int, load: Callable[[tuple[int, int]], dict], is_image: bool
    ) -> SkippingBatcher:
        """`load`ed records of a dataset of `num_records`, batched."""
        batch_size = self.batch_size
        elements = sharded_elements(
            num_records,
            load,
            seed=self.seed,
            process_index=self.process_index,
            process_count=self.process_count,
            read_threads=self.read_threads,
            prefetch_elements=self.prefetch * batch_size,
            num_workers=self.num_workers,
        )
        return SkippingBatcher(iter(elements), batch_size, is_image, self.max_consecutive_skips)


class TrainIterator(grain.DatasetIterator):
    """Alternates whole batches from a video and an image batcher by `is_image_step`; with
    only one of them, every step comes from it.

    A step is all images `[b, 1, H, W, 3]` or all videos `[b, F, H, W, 3]`: the two shapes
    cannot share one array, and a train step jitted for each shape compiles exactly twice.
    `get_state()` is JSON-serialisable; `set_state(s)` resumes with exactly the batches that
    followed the step at which `s` was taken."""

    def __init__(
        self,
        video: SkippingBatcher | None,
        image: SkippingBatcher | None,
        image_ratio: float,
    ):
        super().__init__([it for it in (video, image) if it is not None])
        self._video, self._image = video, image
        self._image_ratio = image_ratio
        self._step = 0

    @property
    def step(self) -> int:
        """Batches produced so far."""
        return self._step

    @property
    def skipped(self) -> dict[str, int]:
        """Records skipped so far by reason (video and image streams added up)."""
        total: Counter[str] = Counter()
        for it in (self._video, self._image):
            if it is not None:
                total.update(it.skipped)
        return dict(sorted(total.items()))

    def _next_is_image(self) -> bool:
        if self._video is None:
            return True
        if self._image is None:
            return False
        return is_image_step(self._step, self._image_ratio)

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._image if self._next_is_image() else self._video)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "step": self._step,
            "video": None if self._video is None else self._video.get_state(),
            "image": None if self._image is None else self._image.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        for name, it in (("video", self._video), ("image", self._image)):
            if (it is None) != (state[name] is None):
                raise ValueError(f"checkpoint and iterator disagree on having a {name} stream")
            if it is not None:
                it.set_state(state[name])
        self._step = int(state["step"])


def single_kind(batcher: SkippingBatcher, is_image: bool) -> TrainIterator:
    """A `TrainIterator` whose every step comes from `batcher`, of images or of videos."""
    return TrainIterator(None, batcher, 1.0) if is_image else TrainIterator(batcher, None, 0.0)
