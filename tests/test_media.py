"""mv2_jax.media: PNG exact, MP4 close (PSNR) with frame count and rate kept, GIF, a folder of
frames, odd sizes, and clear errors for missing, corrupt and truncated files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mv2_jax import media


def moving_pattern(frames: int = 12, height: int = 64, width: int = 96) -> np.ndarray:
    """Smooth colour waves drifting over time: `[F, H, W, 3]` float32 in [0.1, 0.9]. Smooth,
    because 4:2:0 chroma subsampling alone costs a hard colour edge ≈ 6 dB of PSNR."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    out = []
    for t in np.linspace(0, 1, frames, endpoint=False):
        red = np.sin(3 * x + 6 * t)
        green = np.cos(4 * y + 2 * x - 3 * t)
        blue = np.sin(6 * x * y + 6 * t)
        out.append(0.5 + 0.4 * np.stack([red, green, blue], -1))
    return np.stack(out).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def quantized(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255) / 255


# ---------------------------------------------------------------------------- images


def test_png_round_trip_is_exact_and_numbering_continues(tmp_path):
    images = np.random.default_rng(0).random((2, 17, 23, 3), dtype=np.float32)
    first = media.save_images(images, tmp_path / "out")
    assert [p.name for p in first] == ["00000.png", "00001.png"]
    for path, image in zip(first, images):
        with Image.open(path) as png:
            assert png.mode == "RGB" and png.size == (23, 17)
            np.testing.assert_array_equal(np.asarray(png), np.round(image * 255).astype(np.uint8))
        np.testing.assert_array_equal(media.load_image(path), quantized(image).astype(np.float32))
    # A second run appends instead of overwriting.
    again = media.save_images(images[:1], tmp_path / "out")
    assert [p.name for p in again] == ["00002.png"]


def test_to_uint8_clips_and_rounds():
    x = np.array([-0.5, 0.0, 0.6 / 255, 0.499, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(media.to_uint8(x), [0, 0, 1, 127, 255, 255])


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.full((1, 4, 4, 3), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((4, 4, 3), np.float32), r"\[B, H, W, 3\]"),
        (np.zeros((1, 4, 4, 4), np.float32), "3 channels"),
    ],
)
def test_save_images_rejects_bad_input(tmp_path, images, match):
    with pytest.raises(ValueError, match=match):
        media.save_images(images, tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- videos


@pytest.mark.parametrize("fps", [8, 12.5, 30000 / 1001])
def test_mp4_round_trip_keeps_frames_and_rate(tmp_path, fps):
    frames = moving_pattern()
    path = media.write_video(frames, tmp_path / "clip.mp4", fps=fps)
    back, read_fps = media.read_video(path)
    assert back.shape == frames.shape and back.dtype == np.float32
    assert read_fps == pytest.approx(fps, rel=1e-6)
    assert psnr(back, frames) > 36  # ≈ 39 at crf 18; decoding as BT.601 gives ≈ 27


def test_mp4_odd_size_is_padded_by_edge_repeat(tmp_path):
    frames = moving_pattern(frames=5, height=65, width=97)
    back, _ = media.read_video(media.write_video(frames, tmp_path / "odd.mp4"))
    assert back.shape == (5, 66, 98, 3)
    assert psnr(back[:, :65, :97], frames) > 36
    # The added row / column repeat their neighbours (up to coding error).
    assert np.abs(back[:, 65] - back[:, 64]).mean() < 0.02
    assert np.abs(back[:, :, 97] - back[:, :, 96]).mean() < 0.02


def test_gif_round_trip_keeps_frame_count(tmp_path):
    frames = moving_pattern(frames=6)
    path = media.write_video(frames, tmp_path / "clip.gif", fps=10)
    back, fps = media.read_video(path)
    assert back.shape == frames.shape
    assert fps == pytest.approx(10, rel=0.05)  # GIF delays are whole 1/100 s
    assert psnr(back, frames) > 28  # a 256-colour palette per frame
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.info["loop"] == 0


def test_frame_folder_round_trip_is_exact(tmp_path):
    frames = moving_pattern(frames=3, height=9, width=11)
    media.write_video(frames, tmp_path / "frames", fps=8)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]
    back, fps = media.read_video(tmp_path / "frames")
    np.testing.assert_array_equal(back, quantized(frames).astype(np.float32))
    assert fps is None
    with pytest.raises(FileExistsError, match="already holds numbered frames"):
        media.write_video(frames, tmp_path / "frames")


def test_write_video_rejects_unknown_suffix_and_bad_shapes(tmp_path):
    frames = moving_pattern(frames=2)
    with pytest.raises(ValueError, match=r"unsupported suffix '\.avi'.*\.mp4, \.gif"):
        media.write_video(frames, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        media.write_video(frames[None], tmp_path / "clip.mp4")
    with pytest.raises(ValueError, match="fps must be positive"):
        media.write_video(frames, tmp_path / "clip.mp4", fps=0)


# ---------------------------------------------------------------------------- read errors


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.mp4: no such video file"):
        media.read_video(tmp_path / "nothing.mp4")


def test_read_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match=r"corrupt\.mp4: not a readable video"):
        media.read_video(path)


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.9])
def test_read_truncated_mp4(tmp_path, keep):
    whole = media.write_video(moving_pattern(), tmp_path / "whole.mp4", fps=8)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"cut\.mp4: .*truncated"):
        media.read_video(cut)


def test_read_empty_frame_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no numbered PNG frames"):
        media.read_video(tmp_path)
