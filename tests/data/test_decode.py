"""mv2_jax.data.decode: which frames a clip takes (stride, fps), what is decoded, resize and
crop geometry, the [-1, 1] range, and the reasons bad records are refused with."""

from __future__ import annotations

import numpy as np
import pytest

from mv2_jax.data.decode import (
    BadExample,
    clip_indices,
    clip_step,
    decode_clip,
    decode_image,
    resize_and_crop,
    to_model_range,
)
from tests.data.conftest import frame_numbers, image_bytes, video_bytes


def test_clip_step_prefers_rates_when_both_known():
    assert clip_step(24.0, 12.0, frame_stride=3) == 2.0
    assert clip_step(10.0, 4.0, frame_stride=3) == 2.5
    assert clip_step(None, 12.0, frame_stride=3) == 3.0
    assert clip_step(24.0, None, frame_stride=3) == 3.0


def test_clip_indices_cover_every_start_and_refuse_short_videos():
    starts = set()
    for seed in range(200):
        idx = clip_indices(12, 4, 2.0, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.diff(idx), [2, 2, 2])
        starts.add(int(idx[0]))
    assert starts == set(range(6))  # 12 frames, a clip spans 7: starts 0..5
    np.testing.assert_array_equal(clip_indices(8, 4, 2.5, np.random.default_rng(0)), [0, 2, 5, 7])
    with pytest.raises(BadExample) as e:
        clip_indices(6, 4, 2.0, np.random.default_rng(0))
    assert e.value.reason == "too_short"


def test_decode_clip_takes_strided_frames(tmp_path):
    data = video_bytes(12, 3, tmp_path)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        expected = clip_indices(12, 4, 3.0, np.random.default_rng(seed))
        clip = decode_clip(data, num_frames=4, frame_stride=3, rng=rng)
        assert clip.shape == (4, 24, 32, 3) and clip.dtype == np.uint8
        np.testing.assert_array_equal(frame_numbers(clip), expected)
        assert abs(clip[..., 1].mean() - 60) < 3  # green = 20 · video id


def test_decode_clip_target_fps_uses_record_then_container_rate(tmp_path):
    data = video_bytes(12, 0, tmp_path, fps=24)
    # The container says 24 fps: 12 fps target → every 2nd frame.
    clip = decode_clip(data, num_frames=5, target_fps=12, rng=np.random.default_rng(0))
    assert np.all(np.diff(frame_numbers(clip)) == 2)
    # A record rate (manifest) wins over the container: 36 / 12 → every 3rd frame.
    clip = decode_clip(data, num_frames=4, target_fps=12, fps=36, rng=np.random.default_rng(0))
    assert np.all(np.diff(frame_numbers(clip)) == 3)


def test_decode_clip_reasons(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(BadExample) as e:
        decode_clip(b"\x00garbage" * 100, num_frames=2, rng=rng)
    assert e.value.reason == "corrupt_video"
    truncated = video_bytes(12, 1, tmp_path)[:600]
    with pytest.raises(BadExample) as e:
        decode_clip(truncated, num_frames=2, rng=rng)
    assert e.value.reason == "corrupt_video"
    with pytest.raises(BadExample) as e:
        decode_clip(video_bytes(3, 1, tmp_path), num_frames=4, rng=rng)
    assert e.value.reason == "too_short"


def test_decode_image():
    image = decode_image(image_bytes(4))
    assert image.shape == (1, 24, 32, 3)
    np.testing.assert_array_equal(image[0, 0, 0], [50, 80, 200])
    with pytest.raises(BadExample) as e:
        decode_image(b"\x89PNG not really")
    assert e.value.reason == "unreadable_image"


def test_resize_and_crop_center_and_random():
    # Columns numbered 0..31: after cropping we can read off which columns were kept.
    frames = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, None, :, None] * 8, (2, 24, 32, 3))
    # Same scale (24 → 24 rows): no resampling, a centred 24×24 crop keeps columns 4..27.
    out = resize_and_crop(np.ascontiguousarray(frames), 24, 24, rng=None)
    assert out.shape == (2, 24, 24, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], np.arange(4, 28) * 8)
    lefts = set()
    for seed in range(40):
        out = resize_and_crop(np.ascontiguousarray(frames), 24, 24, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[0], out[1])  # one offset for all frames
        lefts.add(int(out[0, 0, 0, 0]) // 8)
    assert lefts == set(range(9))
    # Shrink the shorter side 24 → 12: width 32 → 16, exactly covering 12×16.
    assert resize_and_crop(np.ascontiguousarray(frames), 12, 16, None).shape == (2, 12, 16, 3)
    # Grow to cover a taller target: 24×32 → 48×64, cropped to 48×40.
    assert resize_and_crop(np.ascontiguousarray(frames), 48, 40, None).shape == (2, 48, 40, 3)
    # scale_to = the shorter side (24): a 12×12 patch at full resolution, not the whole frame
    # shrunk to cover it: a centred crop keeps columns 10..21 exactly.
    out = resize_and_crop(np.ascontiguousarray(frames), 12, 12, None, scale_to=24)
    np.testing.assert_array_equal(out[0, 0, :, 0], np.arange(10, 22) * 8)


def test_to_model_range():
    out = to_model_range(np.array([0, 255, 51], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 1.0, -0.6], atol=1e-6)
