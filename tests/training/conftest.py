"""Shared by the training tests: a tiny random pipeline (configs/t2i.py:tiny's model, written
once), and small image and video datasets of coloured squares with matching captions, built
through mv2_jax.data like any user's dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from configs.t2i import get_config, tiny_model
from mv2_jax.data import build_image_dataset, build_video_dataset
from mv2_jax.media import write_video
from mv2_jax.training.random_pipeline import write_random_pipeline

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
SIZE = 40


def square(colour: str, y: int, x: int) -> np.ndarray:
    """uint8 `[40, 40, 3]`: a 12-pixel square of `colour` at (y, x) on dark grey."""
    pixels = np.full((SIZE, SIZE, 3), 20, np.uint8)
    pixels[y : y + 12, x : x + 12] = COLOURS[colour]
    return pixels


@pytest.fixture(scope="session")
def init_pipeline(tmp_path_factory):
    return write_random_pipeline(tiny_model(), tmp_path_factory.mktemp("tiny") / "pipe", seed=0)


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        colour = list(COLOURS)[i % 3]
        y, x = rng.integers(2, SIZE - 14, 2)
        Image.fromarray(square(colour, y, x)).save(root / f"{i}.png")
        rows.append(json.dumps({"path": f"{i}.png", "caption": f"a {colour} square"}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return build_image_dataset(
        root / "data", images_dir=root, manifest=root / "captions.jsonl"
    ).parents[1]


@pytest.fixture(scope="session")
def video_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rows = ["path,caption,fps"]
    for colour in COLOURS:
        frames = np.stack([square(colour, 14, 2 + 3 * k) for k in range(6)])
        write_video(frames, root / f"{colour}.mp4", fps=8)
        rows.append(f"{colour}.mp4,a {colour} square moving right,8")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return build_video_dataset(root, root / "manifest.csv", root / "data").parents[1]


def tiny_config(pipeline, image_data=None, **overrides):
    """configs/t2i.py:tiny on the shared pipeline and data, with `overrides` ("a.b": value),
    locked as train.py locks it."""
    config = get_config("tiny")
    config.model.pipeline = str(pipeline)
    if image_data is not None:
        config.data.image_dir = str(image_data)
    config.log_every = 5
    return with_overrides(config, overrides)


def with_overrides(config, overrides: dict):
    """`config` with `overrides` ("a.b": value) set, locked as train.py locks it."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    config.lock()
    return config
