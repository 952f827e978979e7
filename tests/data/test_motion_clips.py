"""Self-made frame-interpolation clips: deterministic by seed and index, exact transforms at
every time, a checkpointable iterator, and held-out photographs kept out of training."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from mv2_jax.data import motion_clips
from mv2_jax.data.motion_clips import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    Clip,
    MotionClipSource,
    Path2D,
    load_photo,
    motion_clip_iterator,
)


def test_same_seed_and_index_same_example_other_seed_differs():
    a, b = MotionClipSource(32, 6.0, seed=3), MotionClipSource(32, 6.0, seed=4)
    first, again, other = a[7], a[7], b[7]
    for key in ("frame0", "frame1", "frame_t", "t"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["frame_t"], other["frame_t"])
    assert first["frame0"].shape == (32, 32, 3) and first["frame0"].dtype == np.float32
    assert 0 < first["t"] < 1 and first["position"] == 7


@pytest.mark.parametrize(("dy", "dx", "t"), [(-3, 6, 1 / 3), (6, -9, 2 / 3), (4, 2, 0.5)])
def test_pan_renders_the_shifted_crop_at_every_time(dy, dx, t):
    """A pan by (dy, dx) between frames 0 and 1 shows at time s the crop moved by s·(dy, dx);
    at s = 0 and 1 exactly the crops the frames are."""
    image = load_photo("astronaut")
    size, y0, x0 = 24, 200, 210
    centre = (y0 + (size - 1) / 2, x0 + (size - 1) / 2)
    clip = Clip(image, Path2D(centre, (centre[0] + dy, centre[1] + dx)))
    for s in (0.0, t, 1.0):
        y, x = round(y0 + s * dy), round(x0 + s * dx)
        assert abs(y - (y0 + s * dy)) < 1e-9 and abs(x - (x0 + s * dx)) < 1e-9
        np.testing.assert_allclose(
            clip.render(s, (size, size)), image[y : y + size, x : x + size], atol=1e-5
        )


def test_sprite_moves_on_its_own_path_over_a_still_background():
    background = np.zeros((64, 64, 3), np.float32)
    sprite = np.ones((6, 6, 4), np.float32)  # a white square, opaque
    size = 32
    centre = ((size - 1) / 2,) * 2
    at = lambda y, x: ((6 - 1) / 2 - (y - centre[0]), (6 - 1) / 2 - (x - centre[1]))  # noqa: E731
    clip = Clip(background, Path2D((32, 32), (32, 32)), sprite, Path2D(at(8.5, 8.5), at(8.5, 20.5)))
    for s, left in ((0.0, 6), (0.5, 12), (1.0, 18)):
        frame = clip.render(s, (size, size))
        cols = np.nonzero(frame[..., 0].max(0) > 0.5)[0]
        assert (cols.min(), cols.max()) == (left, left + 5), s


def test_iterator_resumes_from_its_state():
    source = MotionClipSource(16, 3.0, seed=1, object_probability=0.0)
    it = motion_clip_iterator(source, global_batch_size=4, read_threads=0, prefetch=0)
    next(it)
    state = it.get_state()
    expected = next(it)
    np.testing.assert_array_equal(expected["position"], [4, 5, 6, 7])
    resumed = motion_clip_iterator(source, global_batch_size=4, read_threads=0, prefetch=0)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["frame_t"], expected["frame_t"])


def test_processes_take_disjoint_positions_of_the_global_order():
    source = MotionClipSource(16, 3.0, object_probability=0.0)
    kw = dict(global_batch_size=4, process_count=2, read_threads=0, prefetch=0)
    rows = [next(motion_clip_iterator(source, process_index=p, **kw))["position"] for p in (0, 1)]
    np.testing.assert_array_equal(rows, [[0, 2], [1, 3]])


def test_heldout_photographs_never_appear_in_training(monkeypatch):
    assert not set(HELDOUT_PHOTOS) & set(TRAIN_PHOTOS)
    used = []
    original = motion_clips.load_photo

    def recording(name):  # names only: a flat grey stand-in is enough for the draw
        used.append(name)
        return np.full((300, 300, 3), 0.5, np.float32)

    monkeypatch.setattr(motion_clips, "load_photo", recording)
    source = MotionClipSource(16, 3.0, seed=0)
    for i in range(60):
        source[i]
    assert used and not set(used) & set(HELDOUT_PHOTOS)
    assert len(set(used)) >= len(TRAIN_PHOTOS) // 2  # the draw does reach many photographs
    for name in HELDOUT_PHOTOS:  # they load offline (bundled with scikit-image)
        assert original(name).shape[-1] == 3
