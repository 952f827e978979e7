"""sample.py v2v: help text, usage errors (exit code 2, before anything is loaded), a size the
pipeline refuses (exit code 1), and an end-to-end run on a tiny random AnimateDiff folder (SDEdit
mode) that upscales a folder of frames ×1.5 into an MP4 + JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mv2_jax.media import read_video
from tests.test_sample_cli import error_of, no_loading, run_help, sample  # noqa: F401

FLAGS = (
    "--model", "--input", "--prompt", "--image", "--scale", "--noise-level", "--strength",
    "--vae-tile-size", "--reference-scale", "--controlnet-scale", "--noise-prior", "--height",
    "--decode-chunk-size", "--steps", "--out",
)  # fmt: skip


@pytest.fixture
def frames(tmp_path):
    """A low-res video as a folder of three 16×16 PNG frames."""
    folder = tmp_path / "low"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture
def video_folder(tmp_path):
    """Just enough of a pipeline folder for validation (nothing is loaded)."""
    folder = tmp_path / "v2v"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "VideoToVideoPipeline"}))
    return folder


def v2v(model, source, *extra):
    return ["v2v", "--model", str(model), "--input", str(source), "--prompt", "a fox", *extra]


def test_v2v_help_explains_every_flag():
    text = run_help("v2v")
    for flag in FLAGS:
        assert flag in text, flag


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--height", "20"), "--height 20 is not a positive multiple of 8"),
        (("--scale", "2", "--width", "64"), "give one"),
        (("--scale", "0.5"), "use a factor ≥ 1"),
        (("--strength", "0"), "must be in (0, 1]"),
        (("--vae-tile-size", "100"), "multiple of 32"),
        (("--image", "/nowhere.png"), "--image /nowhere.png: no such file"),
    ],
)
def test_usage_errors(capsys, no_loading, video_folder, frames, extra, message):  # noqa: F811
    assert message in error_of(capsys, v2v(video_folder, frames, *extra))


def test_missing_input_is_named(capsys, no_loading, video_folder, tmp_path):  # noqa: F811
    error = error_of(capsys, v2v(video_folder, tmp_path / "none.mp4"))
    assert "no such file or folder; pass the low-res video" in error


@pytest.mark.slow
def test_v2v_end_to_end_on_a_tiny_pipeline(tmp_path, frames, capsys):
    pytest.importorskip("torch")
    from tests.pipelines.tiny import tiny_animatediff_pipeline

    folder = tmp_path / "tiny-animatediff"
    tiny_animatediff_pipeline(folder)
    # a target below the input's size stops with the pipeline's message (exit code 1)
    small = v2v(folder, frames, "--height", "8", "--width", "8", "--steps", "2")
    assert sample.main([*small, "--out", str(tmp_path / "x.mp4")]) == 1
    assert "smaller than the input's 16×16" in capsys.readouterr().err

    out = tmp_path / "high.mp4"
    settings = ("--scale", "1.5", "--steps", "2", "--strength", "0.6", "--reference-scale", "off")
    assert sample.main([*v2v(folder, frames, *settings), "--out", str(out)]) == 0
    assert f"wrote {out} (3 frames)" in capsys.readouterr().out
    video, _ = read_video(out)
    assert video.shape == (3, 24, 24, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["mode"], meta["strength"], meta["height"]) == ("sdedit", 0.6, 24)
    assert meta["input"] == str(frames.resolve())
    assert meta["command"].startswith("python sample.py v2v")
