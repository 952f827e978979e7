"""mv2_jax.data.iterators: the global order (epochs reshuffled, shards disjoint with the global
order as their union), the image/video step schedule, and the skipping batcher's counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mv2_jax.data.iterators import SkippingBatcher, is_image_step, sharded_elements


def _identity(item):
    position, record = item
    return {"position": position, "record": record}


def _stream(num_records, process_index=0, process_count=1, seed=0, shuffle=True, **kwargs):
    options = {"read_threads": 0, "prefetch_elements": 0, "num_workers": 0, **kwargs}
    return iter(
        sharded_elements(
            num_records,
            _identity,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            shuffle=shuffle,
            **options,
        )
    )


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_global_order_reshuffles_each_epoch_deterministically():
    n = 10
    order = [e["record"] for e in _take(_stream(n, seed=3), 3 * n)]
    epochs = [order[i * n : (i + 1) * n] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))  # every record once per epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(n))
    assert order == [e["record"] for e in _take(_stream(n, seed=3), 3 * n)]  # same seed
    assert order != [e["record"] for e in _take(_stream(n, seed=4), 3 * n)]
    unshuffled = [e["record"] for e in _take(_stream(n, shuffle=False), 2 * n)]
    assert unshuffled == list(range(n)) * 2


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_one_global_order(process_count):
    n, per_process = 7, 9  # 7 records: epochs end mid-shard, and processes still agree
    global_order = _take(_stream(n, seed=5), process_count * per_process)
    shards = [
        _take(_stream(n, p, process_count, seed=5), per_process) for p in range(process_count)
    ]
    positions = [e["position"] for shard in shards for e in shard]
    assert len(set(positions)) == len(positions)  # disjoint
    assert sorted(positions) == list(range(process_count * per_process))  # union = global
    for p, shard in enumerate(shards):
        for k, element in enumerate(shard):
            assert element == global_order[p + k * process_count]


def test_is_image_step_schedule():
    assert [s for s in range(12) if is_image_step(s, 0.25)] == [3, 7, 11]
    assert [s for s in range(40) if is_image_step(s, 0.1)] == [9, 19, 29, 39]
    assert [s for s in range(6) if is_image_step(s, 2 / 3)] == [1, 2, 4, 5]
    assert not any(is_image_step(s, 0.0) for s in range(100))
    assert all(is_image_step(s, 1.0) for s in range(100))
    assert sum(is_image_step(s, 0.3) for s in range(1000)) == 300


_BAD = {2: "corrupt_video", 5: "corrupt_video", 7: "empty_caption"}


class _Flaky:
    """Records 0..9; 2 and 5 are 'corrupt', 7 has an 'empty caption'."""

    def __call__(self, item):
        _, record = item
        if record in _BAD:
            return {"skip": _BAD[record]}
        return {"record": record, "caption": f"r{record}"}


def test_batcher_skips_and_counts_exactly():
    stream = iter(
        sharded_elements(
            10, _Flaky(), seed=1, process_index=0, process_count=1, read_threads=2,
            prefetch_elements=4, num_workers=0,
        )
    )  # fmt: skip
    batcher = SkippingBatcher(stream, batch_size=3, is_image=False)
    batches = [next(batcher) for _ in range(5)]
    consumed = batcher.get_state()["elements"]["next_index"]
    order = [e["record"] for e in _take(_stream(10, seed=1), consumed)]
    expected = {"corrupt_video": 0, "empty_caption": 0}
    for record in order:
        if record in _BAD:
            expected[_BAD[record]] += 1
    assert batcher.skipped == expected and expected["corrupt_video"] >= 2
    good = [r for r in order if r not in _BAD]
    assert np.concatenate([b["record"] for b in batches]).tolist() == good
    assert batches[0]["caption"].dtype == object and batches[0]["caption"][0] == f"r{good[0]}"
    np.testing.assert_array_equal(batches[0]["is_image"], [False] * 3)


def test_batcher_gives_up_on_a_stream_of_bad_records():
    class AllBad:
        def __call__(self, item):
            return {"skip": "unreadable_image"}

    stream = iter(
        sharded_elements(
            4, AllBad(), seed=0, process_index=0, process_count=1, read_threads=0,
            prefetch_elements=0, num_workers=0,
        )
    )  # fmt: skip
    batcher = SkippingBatcher(stream, batch_size=2, is_image=True, max_consecutive_skips=20)
    with pytest.raises(RuntimeError, match="21 records in a row"):
        next(batcher)
