"""mv2_jax.data.pipeline end to end: batch format, the joint image/video schedule, the same global
batches whatever the process count, determinism, bad records skipped and counted, and exact
resumption from `get_state` (also through orbax with grain's checkpoint handler)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from mv2_jax.data.iterators import sharded_elements
from mv2_jax.data.pipeline import ClipSpec, make_iterator_from_sources, make_train_iterator
from tests.data.conftest import frame_numbers, image_bytes, video_bytes


def _iterator(video_data, image_data, **overrides):
    options = dict(
        video_dir=video_data,
        image_dir=image_data,
        image_ratio=0.25,
        global_batch_size=4,
        num_frames=4,
        height=16,
        width=16,
        frame_stride=2,
        read_threads=2,
    )
    return make_train_iterator(**{**options, **overrides})


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(a["pixels"], b["pixels"])
    assert a["caption"].tolist() == b["caption"].tolist()
    np.testing.assert_array_equal(a["is_image"], b["is_image"])


def test_batches_and_joint_schedule(video_data, image_data):
    it = _iterator(video_data, image_data)
    batches = [next(it) for _ in range(8)]
    assert [bool(b["is_image"][0]) for b in batches] == [False, False, False, True] * 2
    for b in batches:
        assert b["pixels"].dtype == np.float32 and b["caption"].dtype == object
        assert b["pixels"].min() >= -1.0 and b["pixels"].max() <= 1.0
        ids = [int(c.split()[1].rstrip(",")) for c in b["caption"]]
        green = (b["pixels"][..., 1].mean(axis=(-1, -2, -3)) + 1) * 127.5
        np.testing.assert_allclose(green, 20 * np.array(ids), atol=3)  # pixels match captions
        if b["is_image"][0]:
            assert b["pixels"].shape == (4, 1, 16, 16, 3)
            assert all(c.startswith("image ") for c in b["caption"])
        else:
            assert b["pixels"].shape == (4, 4, 16, 16, 3)
            assert (np.diff(frame_numbers(b["pixels"]), axis=1) == 2).all()
    assert it.skipped == {} and it.step == 8


def test_target_fps_uses_manifest_rate(video_data):
    # The manifest says 8 fps (v0: unknown, so its container's 8 fps): 4 fps → every 2nd frame.
    it = _iterator(video_data, None, image_ratio=0.0, target_fps=4.0, frame_stride=5)
    for _ in range(3):
        assert (np.diff(frame_numbers(next(it)["pixels"]), axis=1) == 2).all()


def test_global_batches_do_not_depend_on_process_count(video_data):
    one = _iterator(video_data, None, image_ratio=0.0, random_crop=True, height=12, width=12)
    two = [
        _iterator(
            video_data, None, image_ratio=0.0, random_crop=True, height=12, width=12,
            process_index=p, process_count=2,
        )
        for p in range(2)
    ]  # fmt: skip
    for _ in range(3):
        full = next(one)
        halves = [next(it) for it in two]
        # Process p holds global positions p, p + 2, …: interleave to rebuild the global batch.
        rebuilt = np.stack([halves[k % 2]["pixels"][k // 2] for k in range(4)])
        np.testing.assert_array_equal(full["pixels"], rebuilt)


def test_same_seed_same_batches_other_seed_other_batches(video_data, image_data):
    a, b = _iterator(video_data, image_data), _iterator(video_data, image_data)
    c = _iterator(video_data, image_data, seed=1)
    first = [next(a) for _ in range(4)]
    for batch in first:
        _same(batch, next(b))
    other = [next(c) for _ in range(4)]
    assert any(x["caption"].tolist() != y["caption"].tolist() for x, y in zip(first, other))


def _flaky_sources(tmp_path):
    def video(i, frames=12, caption=None):
        caption = f"video {i}" if caption is None else caption
        return {"video": video_bytes(frames, i, tmp_path), "caption": caption.encode(), "fps": 8.0}

    videos = [video(i) for i in range(5)]
    videos += [
        {"video": b"\x00not a video" * 50, "caption": b"corrupt", "fps": 0.0},
        video(5, frames=3),  # too short for 4 frames at stride 2
        video(6, caption="  "),
    ]
    images = [{"image": image_bytes(i), "caption": f"image {i}".encode()} for i in range(4)]
    images.append({"image": b"GIF89a broken", "caption": b"unreadable"})
    return videos, images


def _flaky_iterator(videos, images):
    spec = ClipSpec(num_frames=4, height=16, width=16, frame_stride=2, random_crop=True)
    return make_iterator_from_sources(
        videos, images, image_ratio=1 / 3, global_batch_size=2, spec=spec, seed=7, read_threads=2
    )


def _expected_skips(state, seed, sources, reasons):
    """Count the bad records among the positions each stream has consumed."""
    counts = {}
    for name, source in sources.items():
        consumed = state[name]["elements"]["next_index"]
        stream = sharded_elements(
            len(source), lambda item: {"record": item[1]}, seed=seed, process_index=0,
            process_count=1, read_threads=0, prefetch_elements=0, num_workers=0,
        )  # fmt: skip
        for element in itertools.islice(iter(stream), consumed):
            reason = reasons[name].get(element["record"])
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def test_bad_records_are_skipped_counted_and_resumed_exactly(tmp_path):
    videos, images = _flaky_sources(tmp_path)
    reasons = {
        "video": {5: "corrupt_video", 6: "too_short", 7: "empty_caption"},
        "image": {4: "unreadable_image"},
    }
    original = _flaky_iterator(videos, images)
    states, batches = [], []
    for _ in range(12):
        states.append(json.loads(json.dumps(original.get_state())))  # JSON round trip
        batches.append(next(original))
    for b in batches:  # no bad record ever reaches a batch
        assert not {"corrupt", "unreadable", "video 5", "video 6"} & set(b["caption"].tolist())
    expected = _expected_skips(original.get_state(), 7, {"video": videos, "image": images}, reasons)
    assert set(expected) == {"corrupt_video", "too_short", "empty_caption", "unreadable_image"}
    assert original.skipped == expected

    for k in (0, 4, 7):  # resume at an image step, after one, and mid-run
        resumed = _flaky_iterator(videos, images)
        resumed.set_state(states[k])
        assert resumed.step == k
        for batch in batches[k:]:
            _same(next(resumed), batch)
        assert resumed.skipped == original.skipped


@pytest.mark.slow  # starts 2 worker processes (≈8 s)
def test_worker_processes_give_the_same_batches(video_data):
    reference = _iterator(video_data, None, image_ratio=0.0)
    workers = _iterator(video_data, None, image_ratio=0.0, num_workers=2)
    try:
        for _ in range(3):
            _same(next(reference), next(workers))
        state = workers.get_state()
        json.dumps(state)
        after = next(workers)
        again = _iterator(video_data, None, image_ratio=0.0, num_workers=2)
        again.set_state(state)
        _same(next(again), after)
        again.close()
    finally:
        workers.close()


def test_orbax_saves_and_restores_the_iterator(video_data, image_data, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    it = _iterator(video_data, image_data)
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = [next(it) for _ in range(3)]

    restored = _iterator(video_data, image_data)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restore = grain.checkpoint.CheckpointRestore(restored)
        manager.restore(3, args=ocp.args.Composite(data=restore))
    assert restored.step == 3
    for batch in expected:
        _same(next(restored), batch)


def test_usage_errors(video_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of process_count 2"):
        _iterator(video_data, None, image_ratio=0.0, global_batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="needs an image dataset"):
        _iterator(video_data, None, image_ratio=0.5)
    with pytest.raises(ValueError, match="needs a video dataset"):
        _iterator(None, video_data, image_ratio=0.5)
    with pytest.raises(ValueError, match=r"image_ratio must be in \[0, 1\]"):
        _iterator(video_data, video_data, image_ratio=1.5)
    with pytest.raises(FileNotFoundError, match=r"python -m mv2_jax\.data\.build video"):
        _iterator(tmp_path, None, image_ratio=0.0)
