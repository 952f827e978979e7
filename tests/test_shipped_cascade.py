"""The README's first command on the models that ship in the package: `sample.py "a prompt"`
with no model flag runs all four shapes-world stages and writes the video the prompt asks for,
read back from the mp4's pixels — also for a (colour, shape) pair training never showed."""

import pytest

import sample
from mv2_jax.data.shapes import parse_prompt
from mv2_jax.evaluation.shapes import Combination, score_sample
from mv2_jax.media import load_image, read_video


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """One cache for both prompts: the second run reuses the first's compiled programs."""
    return tmp_path_factory.mktemp("xla")


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle moving right",  # the README's
        "The magenta triangle moving up.",  # a held-out pair, in other words than training's
    ],
)
def test_the_shipped_cascade_makes_the_video_the_prompt_asks_for(
    prompt, tmp_path, compilation_cache
):
    combination = Combination(*parse_prompt(prompt))
    out = tmp_path / "video.mp4"
    argv = [prompt, "--out", str(out), "--save-intermediates"]
    assert sample.main([*argv, "--compilation-cache", str(compilation_cache)]) == 0

    frames, fps = read_video(out)
    assert frames.shape == (22, 128, 128, 3) and fps == 24.0
    keyframes, _ = read_video(tmp_path / "video.keyframes.mp4")
    assert keyframes.shape == (8, 64, 64, 3)
    key_image = load_image(tmp_path / "video.key.png")
    scores = score_sample(combination, key_image, keyframes, frames)
    assert scores["key_colour"] and scores["key_shape"], scores["key_read"]
    assert scores["colour"] and scores["shape"] and scores["motion"], scores["video_read"]
    assert scores["consistent"] and scores["first_frame_psnr"] > 18.0, scores
