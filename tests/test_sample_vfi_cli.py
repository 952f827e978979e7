"""sample.py vfi: help text, usage errors (exit code 2, nothing loaded), unreadable input, and an
end-to-end run with a tiny random FrameInterpolator folder: (N−1)·k+1 frames, originals kept,
the JSON settings beside the output."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.media import read_video, write_video
from mv2_jax.models.vfi import FrameInterpolator
from mv2_jax.weights.vfi import write_vfi_folder
from tests.test_sample_cli import error_of, run_help, sample

FLAGS = ("--input", "--factor", "--model", "--batch-size", "--fps", "--dtype", "--out")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random FrameInterpolator folder (init with random output heads)."""
    module = FrameInterpolator(block_channels=(8,), block_scales=(1,), num_res=1, refine_channels=0)
    frame = jnp.zeros((1, 4, 4, 3))
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), frame, frame, jnp.ones(1)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32), params["params"]
    )
    return write_vfi_folder(tmp_path_factory.mktemp("vfi") / "model", module, params)


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    """4 frames of 10×14 (not a multiple of the model's 4) as numbered PNGs."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 10, 14, 3), dtype=np.uint8)
    return write_video(frames, tmp_path_factory.mktemp("in") / "frames"), frames


def test_help_explains_every_flag():
    assert "    vfi " in run_help()
    text = run_help("vfi")
    for flag in FLAGS:
        assert flag in text
    assert "(N−1)·k+1" in text and "shipped" in text


def test_interpolates_a_folder_of_frames(model_folder, frames_folder, tmp_path, capsys):
    source, frames = frames_folder
    out = tmp_path / "out"
    argv = ["vfi", "--input", str(source), "--model", str(model_folder), "--factor", "3"]
    assert sample.main([*argv, "--batch-size", "4", "--out", str(out)]) == 0
    video, _ = read_video(out)
    assert video.shape == ((4 - 1) * 3 + 1, 10, 14, 3)
    np.testing.assert_array_equal(np.round(video[::3] * 255).astype(np.uint8), frames)
    assert np.abs(video[1] - video[0]).max() > 0  # new frames are not copies
    settings = json.loads((out / "settings.json").read_text())
    assert settings["factor"] == 3 and settings["num_frames"] == 10
    assert settings["input_frames"] == 4 and settings["fps"] == 8.0 * 3
    assert "wrote" in capsys.readouterr().out


def test_mp4_in_mp4_out_keeps_the_rate_per_second(model_folder, tmp_path):
    clip = write_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "in.mp4", fps=10)
    out = tmp_path / "out.mp4"
    argv = ["vfi", "--input", str(clip), "--model", str(model_folder), "--factor", "2"]
    assert sample.main([*argv, "--out", str(out)]) == 0
    video, fps = read_video(out)
    assert video.shape[0] == (3 - 1) * 2 + 1 and fps == pytest.approx(20)
    assert json.loads(out.with_suffix(".json").read_text())["input_fps"] == pytest.approx(10)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--factor", "0"], "--factor 0: must be an integer ≥ 1"),
        (["--batch-size", "0"], "--batch-size 0: needs at least 1"),
        (["--fps", "-1"], "--fps -1.0: must be positive"),
        (["--out", "x.avi"], "unsupported suffix '.avi'"),
        (["--model", "nowhere"], "--model nowhere: no such folder"),
        (["--model", __file__], "convert/rife_to_vfi.py"),
    ],
)
def test_usage_errors(capsys, frames_folder, extra, message):
    err = error_of(capsys, ["vfi", "--input", str(frames_folder[0]), *extra])
    assert message in err


def test_bad_input_is_named(capsys, model_folder, tmp_path):
    model = ["--model", str(model_folder), "--out", str(tmp_path / "o.mp4")]
    assert "no such file or folder" in error_of(capsys, ["vfi", "--input", "missing.mp4"])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    assert sample.main(["vfi", "--input", str(corrupt), *model]) == 1
    assert "cannot decode --input" in capsys.readouterr().err
    single = write_video(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "single")
    err = error_of(capsys, ["vfi", "--input", str(single), *model])
    assert "has 1 frame; interpolation needs at least 2" in err
