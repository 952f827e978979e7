"""The text-to-video cascade on tiny random stages: every intermediate has the planned shape,
the interpolated video keeps the upscaled keyframes, every stage is compiled ahead (no compile
once the stages run, the same pixels as compiling each stage as it goes, a stage's error raised
as it was), a second prompt compiles nothing, skipped stages pass their input on, every size
problem is named before a stage runs, and `sample.py "a prompt"` writes the video, its settings
and the intermediates."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mv2_jax
import sample
from mv2_jax.commands import cascade as cascade_command
from mv2_jax.media import read_video
from mv2_jax.models.vfi import FrameInterpolator
from mv2_jax.pipelines.cascade import StageSettings, TextToVideoCascade
from mv2_jax.pipelines.loading import load_i2v_pipeline, load_v2v_pipeline
from mv2_jax.pipelines.vfi import FrameInterpolationPipeline
from tests.pipelines.tiny import tiny_animatediff_pipeline
from tests.weights.tiny_models import tiny_pipeline

pytestmark = [pytest.mark.torch, pytest.mark.slow]

T2I = StageSettings(steps=2, height=16, width=16, seed=1)
I2V = StageSettings(steps=2, height=16, width=16, seed=2, scheduler="ddim")
V2V = StageSettings(steps=2, height=32, width=32, seed=3, extra={"strength": 0.6})
RUN = dict(t2i=T2I, i2v=I2V, v2v=V2V, num_frames=3, factor=3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    tiny_pipeline(root / "t2i")
    tiny_animatediff_pipeline(root / "i2v")
    return root / "t2i", root / "i2v"


@pytest.fixture(scope="module")
def compiles():
    """The seconds of every XLA backend compile while this module's tests run, as they end."""
    seconds = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seconds
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def report():
    return []  # the cascade's progress lines, each with the number of compiles before it


@pytest.fixture(scope="module")
def cascade(folders, report, compiles):
    t2i_folder, i2v_folder = folders
    interpolator = FrameInterpolator(block_channels=(8, 8), block_scales=(2, 1), num_res=1,
                                     refine_channels=8)  # fmt: skip
    frame = np.zeros((1, 8, 8, 3), np.float32)
    params = interpolator.init(jax_key(), frame, frame, np.full((1,), 0.5, np.float32))["params"]
    return TextToVideoCascade(
        image_to_video=load_i2v_pipeline(i2v_folder),
        text_to_image=mv2_jax.load_pipeline(t2i_folder),
        video_to_video=load_v2v_pipeline(i2v_folder),  # training-free SDEdit mode
        interpolator=FrameInterpolationPipeline(interpolator, params),
        report=lambda line: report.append((line, len(compiles))),
    )


@pytest.fixture(scope="module")
def first(cascade, report, compiles):
    """The cascade's first call (it compiles every stage ahead) and the compiles it made."""
    before = len(compiles)
    out = cascade("a red fox", **RUN)
    return out, before, len(compiles)


def jax_key():
    return jax.random.key(0)


def _trace_counts(cascade):
    return [
        stage.trace_count
        for stage in (
            cascade.text_to_image,
            cascade.image_to_video,
            cascade.video_to_video,
            cascade.interpolator,
        )
    ]


def test_every_stage_runs_at_its_planned_size_and_a_new_prompt_compiles_nothing(
    cascade, first, report, compiles
):
    out, _, _ = first
    assert out.key_image.shape == (16, 16, 3)
    assert out.keyframes.shape == (3, 16, 16, 3)
    assert out.upscaled.shape == (3, 32, 32, 3)
    assert out.frames.shape == (7, 32, 32, 3)
    np.testing.assert_array_equal(out.frames[::3], out.upscaled)  # VFI keeps its input frames
    lines = [line for line, _ in report]
    assert [line.split(":")[0] for line in lines] == [
        "[1/4] t2i", "[2/4] i2v", "[3/4] v2v", "[4/4] vfi"
    ]  # fmt: skip
    assert "16×16 → 32×32" in lines[2] and "3 → 7 frames" in lines[3]

    counts = _trace_counts(cascade)
    compiled = len(compiles)
    again = cascade("a blue bird", **RUN)
    assert _trace_counts(cascade) == counts and len(compiles) == compiled
    assert np.abs(again.key_image - out.key_image).max() > 1e-3  # the prompt reached T2I


def test_every_stage_compiles_ahead_and_makes_what_compiling_as_it_goes_makes(
    cascade, first, report, compiles
):
    out, before, after = first
    assert after > before and _trace_counts(cascade) == [1, 1, 1, 1]
    assert [count for _, count in report[:4]] == [after] * 4  # all before the first stage ran
    # The same pipelines compiling afresh as each stage's input arrives; I2V (whose call V2V's
    # extends) is shared, to keep the test short.
    fresh = {
        name: dataclasses.replace(getattr(cascade, name), trace_count=0)  # new caches
        for name in ("text_to_image", "video_to_video")
    }
    interpolator = dataclasses.replace(cascade.interpolator, _step=None, trace_count=0)
    as_it_goes = TextToVideoCascade(
        cascade.image_to_video, **fresh, interpolator=interpolator, report=lambda line: None
    )
    before = len(compiles)
    again = as_it_goes("a red fox", **RUN, compile_workers=0)
    traced = [pipe.trace_count for pipe in (*fresh.values(), interpolator)]
    assert len(compiles) > before and traced == [1, 1, 1]  # each compiled as it ran
    for name in ("key_image", "keyframes", "upscaled", "frames"):
        np.testing.assert_array_equal(getattr(again, name), getattr(out, name), err_msg=name)


def test_an_error_while_compiling_ahead_reaches_the_caller_as_raised(cascade):
    lines = []
    short = TextToVideoCascade(cascade.image_to_video, report=lines.append)
    key = np.zeros((16, 16, 3), np.float32)
    bad = dataclasses.replace(I2V, extra={"noise_prior": "blue"})
    with pytest.raises(ValueError, match=r"^noise_prior 'blue'; choose from \(") as error:
        short("a red fox", key_image=key, i2v=bad, num_frames=3)
    raised_in = {Path(entry.path).parts[-3:] for entry in error.traceback}
    assert ("concurrent", "futures", "thread.py") in raised_in  # in a compile thread
    assert lines == []  # no stage ran


def test_a_key_image_skips_t2i_and_missing_stages_pass_their_input_on(cascade):
    key = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    short = TextToVideoCascade(cascade.image_to_video, report=lambda line: None)
    out = short("a red fox", key_image=key, **{**RUN, "factor": 5})
    assert out.upscaled is None and out.frames is out.keyframes
    np.testing.assert_array_equal(out.key_image, key)
    # the same I2V settings as the full cascade: the compiled function is reused
    full = cascade("a red fox", key_image=key, **RUN)
    np.testing.assert_allclose(full.keyframes, out.keyframes, atol=1e-6)


def test_the_plan_names_every_size_problem_before_a_stage_runs(cascade):
    partial = TextToVideoCascade(
        cascade.image_to_video, video_to_video=cascade.video_to_video,
        interpolator=cascade.interpolator,
    )  # fmt: skip
    with pytest.raises(ValueError) as error:
        partial.plan(
            i2v=StageSettings(height=20, width=16),
            v2v=StageSettings(height=8, width=64),
            num_frames=99,
            factor=0,
        )
    text = str(error.value)
    for problem in (
        "no key image and no text-to-image model",
        "i2v: height 20 is not a positive multiple of 8",
        "i2v: 99 frames; the motion modules take 1 to 8",
        "v2v: target 8×64 is smaller than the keyframes' 20×16",
        "vfi: factor 0",
    ):
        assert problem in text


def test_sample_py_with_a_prompt_writes_the_video_settings_and_intermediates(
    cascade, folders, monkeypatch, tmp_path, capsys
):
    t2i_folder, i2v_folder = folders
    monkeypatch.setattr(cascade_command, "build_cascade", lambda *args: cascade)
    out = tmp_path / "fox.mp4"
    argv = [
        "a red fox", "--t2i-model", str(t2i_folder), "--i2v-model", str(i2v_folder),
        "--t2i-steps", "2", "--t2i-size", "16x16", "--t2i-seed", "1",
        "--i2v-steps", "2", "--i2v-size", "16x16", "--i2v-seed", "2", "--i2v-scheduler", "ddim",
        "--v2v-steps", "2", "--v2v-size", "32x32", "--v2v-seed", "3", "--strength", "0.6",
        "--num-frames", "3", "--factor", "3", "--noise-prior", "mean_shift",
        "--out", str(out), "--save-intermediates",
    ]  # fmt: skip
    counts = _trace_counts(cascade)
    assert sample.main(argv) == 0
    assert _trace_counts(cascade) == counts  # the settings of the first test: nothing compiled
    assert f"wrote {out} (7 frames)" in capsys.readouterr().out
    frames, _ = read_video(out)
    assert frames.shape == (7, 32, 32, 3)
    assert read_video(tmp_path / "fox.keyframes.mp4")[0].shape == (3, 16, 16, 3)
    assert read_video(tmp_path / "fox.upscaled.mp4")[0].shape == (3, 32, 32, 3)
    assert (tmp_path / "fox.key.png").is_file()
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["stages"]["v2v"]["extra"]["strength"] == 0.6
    assert settings["plan"]["upscaled_size"] == [32, 32] and settings["frames"] == 7


def test_unet_calls_count_the_steps_run_each_guided_one_twice(cascade, first, report):
    """The count in each stage's progress line: steps after `strength`, × 2 under guidance."""
    guided = {"t2i": 2 * 2, "i2v": 2 * 2, "v2v": 1 * 2}  # V2V: strength 0.6 of 2 steps runs 1
    assert cascade.unet_calls("a red fox", **RUN) == guided
    counts = [line.rsplit(", ", 1)[1] for line, _ in report[:3]]
    assert counts == [f"{n} UNet calls" for n in guided.values()]
    unguided = {stage: dataclasses.replace(RUN[stage], guidance_scale=1.0) for stage in guided}
    longer = dataclasses.replace(unguided["v2v"], steps=5)  # int(5 · 0.6) = 3 steps run
    calls = cascade.unet_calls("a red fox", **{**RUN, **unguided, "v2v": longer})
    assert calls == {"t2i": 2, "i2v": 2, "v2v": 3}
    assert cascade.unet_calls("a red fox", key_image=np.zeros((16, 16, 3), np.float32), **RUN) == {
        "i2v": 4, "v2v": 2
    }  # fmt: skip
