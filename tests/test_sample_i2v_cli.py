"""sample.py i2v: help text, usage errors (exit code 2, before anything is loaded), and an
end-to-end run on a tiny random AnimateDiff folder that turns a key image into an MP4 + JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mv2_jax.media import read_video
from tests.test_sample_cli import error_of, no_loading, run_help, sample  # noqa: F401

FLAGS = (
    "--model", "--image", "--prompt", "--reference-scale", "--controlnet", "--controlnet-scale",
    "--controlnet-frames", "--ip-adapter", "--image-encoder", "--ip-adapter-scale",
    "--noise-prior", "--noise-prior-strength", "--num-frames", "--steps", "--out", "--mesh",
)  # fmt: skip


@pytest.fixture
def key_image(tmp_path):
    path = tmp_path / "key.png"
    pixels = np.random.default_rng(0).integers(0, 256, (20, 28, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def video_folder(tmp_path):
    """Just enough of an AnimateDiff folder for validation (nothing is loaded)."""
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "AnimateDiffPipeline"}))
    return folder


def i2v(model, image, *extra):
    return ["i2v", "--model", str(model), "--image", str(image), "--prompt", "a fox", *extra]


def test_i2v_help_explains_every_flag():
    text = run_help("i2v")
    for flag in FLAGS:
        assert flag in text, flag


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--noise-prior-strength", "1.5"), "must be in [0, 1]"),
        (("--controlnet", "/nowhere"), "not a component folder"),
        (("--ip-adapter", "/nowhere.safetensors"), "no such file"),
        (("--num-frames", "0"), "at least 1 frame"),
    ],
)
def test_usage_errors(capsys, no_loading, video_folder, key_image, extra, message):  # noqa: F811
    assert message in error_of(capsys, i2v(video_folder, key_image, *extra))


def test_missing_image_is_named(capsys, no_loading, video_folder, tmp_path):  # noqa: F811
    error = error_of(capsys, i2v(video_folder, tmp_path / "none.png"))
    assert "no such file; pass the key image" in error


def test_i2v_end_to_end_on_a_tiny_pipeline(tmp_path, key_image, capsys):
    pytest.importorskip("torch")
    from tests.pipelines.tiny import tiny_animatediff_pipeline

    folder = tmp_path / "tiny-animatediff"
    tiny_animatediff_pipeline(folder)
    out = tmp_path / "keyframes.mp4"
    settings = ("--num-frames", "3", "--steps", "2", "--height", "16", "--width", "16")
    argv = [*i2v(folder, key_image, *settings), "--noise-prior", "frequency", "--out", str(out)]
    assert sample.main(argv) == 0
    assert f"wrote {out} (3 frames)" in capsys.readouterr().out
    frames, _ = read_video(out)
    assert frames.shape == (3, 16, 16, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["image"] == str(key_image.resolve())
    assert (meta["noise_prior"], meta["reference_scale"]) == ("frequency", 1.0)
    assert meta["command"].startswith("python sample.py i2v")
