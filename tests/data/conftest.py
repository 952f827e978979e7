"""Tiny media for the data tests: 24×32 videos whose frames say who they are (red = 20·frame
index, green = 20·video id) and images likewise (green = 20·image id), plus datasets built
from them once per session."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from mv2_jax.media import write_video

HEIGHT, WIDTH = 24, 32


def video_frames(num_frames: int, video_id: int) -> np.ndarray:
    """uint8 `[F, 24, 32, 3]`: frame k is flat red 20·k, green 20·video_id, blue 128."""
    frames = np.empty((num_frames, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 0] = (20 * np.arange(num_frames))[:, None, None]
    frames[..., 1] = 20 * video_id
    frames[..., 2] = 128
    return frames


def frame_numbers(pixels: np.ndarray) -> np.ndarray:
    """Which source frames a decoded clip holds: float [-1, 1] or uint8 `[..., F, H, W, 3]` →
    int `[..., F]` from the red level (H.264 keeps flat colours within a few levels)."""
    red = pixels[..., 0].mean(axis=(-1, -2))
    if pixels.dtype != np.uint8:
        red = (red + 1.0) * 127.5
    return np.round(red / 20).astype(int)


def video_bytes(num_frames: int, video_id: int, tmp_path, fps: float = 8.0) -> bytes:
    path = tmp_path / f"clip_{video_id}_{num_frames}_{fps}.mp4"
    write_video(video_frames(num_frames, video_id), path, fps=fps)
    return path.read_bytes()


def image_bytes(image_id: int, size=(WIDTH, HEIGHT)) -> bytes:
    pixels = np.full((size[1], size[0], 3), (50, 20 * image_id, 200), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory):
    """Eight 12-frame videos `v0.mp4 … v7.mp4` and a CSV manifest that also lists a missing
    file and an empty caption (2 rows to be skipped at build time)."""
    root = tmp_path_factory.mktemp("videos")
    rows = ["path,caption,fps"]
    for i in range(8):
        write_video(video_frames(12, i), root / f"v{i}.mp4", fps=8)
        rows.append(f'v{i}.mp4,"video {i}, flat",{"" if i == 0 else 8}')
    rows += ["gone.mp4,a missing file,8", "v1.mp4,,8"]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def video_data(video_folder, tmp_path_factory):
    from mv2_jax.data.builders import build_video_dataset

    data_dir = tmp_path_factory.mktemp("video_data")
    build_video_dataset(video_folder, video_folder / "manifest.csv", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Six PNGs `i0.png … i5.png` and a JSONL manifest."""
    root = tmp_path_factory.mktemp("images")
    lines = []
    for i in range(6):
        (root / f"i{i}.png").write_bytes(image_bytes(i))
        lines.append(json.dumps({"path": f"i{i}.png", "caption": f"image {i}"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def image_data(image_folder, tmp_path_factory):
    from mv2_jax.data.builders import build_image_dataset

    data_dir = tmp_path_factory.mktemp("image_data")
    build_image_dataset(data_dir, images_dir=image_folder, manifest=image_folder / "captions.jsonl")
    return data_dir
