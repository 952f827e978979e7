"""sample.py t2v: help text, usage errors (exit code 2, before anything is loaded), and an
end-to-end run on a tiny random AnimateDiff pipeline folder that writes an MP4 and its JSON."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import mv2_jax
from mv2_jax.commands import video as video_command
from mv2_jax.diffusion.schedulers import SCHEDULERS
from mv2_jax.media import read_video
from tests.test_sample_cli import error_of, no_loading, run_help, sample  # noqa: F401

FLAGS = (
    "--model", "--prompt", "--negative-prompt", "--num-frames", "--steps", "--guidance-scale",
    "--scheduler", "--seed", "--height", "--width", "--fps", "--decode-chunk-size", "--dtype",
    "--mesh", "--out",
)  # fmt: skip


def t2v(model, *extra):
    return ["t2v", "--model", str(model), "--prompt", "a fox", *extra]


@pytest.fixture
def video_folder(tmp_path):
    """Just enough of an AnimateDiff folder for validation (nothing is loaded)."""
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "AnimateDiffPipeline"}))
    return folder


def test_t2v_help_explains_every_flag():
    assert "    t2v " in run_help()
    text = run_help("t2v")
    for flag in FLAGS:
        assert flag in text
    for name in SCHEDULERS:
        assert name in text
    assert "motion_max_seq_length" in text and ".mp4" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-frames", "0"], "--num-frames 0: needs at least 1 frame"),
        (["--decode-chunk-size", "0"], "--decode-chunk-size 0: needs at least 1"),
        (["--fps", "0"], "--fps 0.0: must be positive"),
        (["--out", "video.avi"], "unsupported suffix '.avi'; use .mp4, .gif"),
        (["--height", "100"], "--height 100 is not a positive multiple of 8; try 96 or 104"),
        (["--scheduler", "plms"], "--scheduler 'plms' is unknown"),
    ],
)
def test_usage_errors(capsys, no_loading, video_folder, extra, message):  # noqa: F811
    err = error_of(capsys, t2v(video_folder, *extra))
    assert err.startswith("sample.py t2v: error: ")
    assert message in err


def test_image_pipeline_folder_is_refused_with_the_fix(capsys, no_loading, tmp_path):  # noqa: F811
    index = {"_class_name": "StableDiffusionPipeline"}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    err = error_of(capsys, t2v(tmp_path))
    assert re.search(r"is a StableDiffusionPipeline \(text → image\): use `sample.py t2i`", err)
    assert "--motion-adapter" in err
    err = error_of(capsys, t2v(tmp_path / "missing"))
    assert "no such folder" in err


@pytest.mark.torch
@pytest.mark.slow
def test_t2v_end_to_end_on_a_tiny_pipeline(monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch")
    from tests.pipelines.tiny import tiny_animatediff_pipeline

    folder = tmp_path / "tiny-animatediff"
    tiny_animatediff_pipeline(folder)
    loaded = []

    def load_and_keep(path, dtype, load=mv2_jax.load_pipeline):
        loaded.append(load(path, dtype=dtype))
        return loaded[-1]

    monkeypatch.setitem(vars(mv2_jax), "load_pipeline", load_and_keep)
    written = []  # the frames handed to media.write_video (H.264 blurs random-weight noise)

    def write_and_keep(frames, path, fps, write=video_command.write_video):
        written.append(np.asarray(frames))
        return write(frames, path, fps=fps)

    monkeypatch.setattr(video_command, "write_video", write_and_keep)
    out = tmp_path / "out" / "fox.mp4"
    settings = ("--num-frames", "4", "--steps", "2", "--seed", "3", "--height", "16")
    argv = [*t2v(folder, *settings), "--width", "24", "--fps", "12", "--out", str(out)]
    assert sample.main(argv) == 0
    assert f"wrote {out} (4 frames)" in capsys.readouterr().out

    frames, fps = read_video(out)
    assert frames.shape == (4, 16, 24, 3) and fps == 12
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["video"], meta["prompt"], meta["seed"]) == ("fox.mp4", "a fox", 3)
    assert meta["steps"] == 2
    assert (meta["num_frames"], meta["height"], meta["width"]) == (4, 16, 24)
    assert meta["guidance_scale"] == 7.5 and meta["command"].startswith("python sample.py t2v")

    # The video is what the pipeline gives for these settings, not another seed's.
    (pipe,) = loaded
    call = dict(num_inference_steps=2, num_frames=4, height=16, width=24)
    direct = pipe("a fox", seed=3, **call)[0]
    np.testing.assert_array_equal(written[0], direct)
    assert np.abs(pipe("a fox", seed=4, **call)[0] - direct).mean() > 0.01
