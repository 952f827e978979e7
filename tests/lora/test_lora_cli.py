"""`--lora PATH[:SCALE]` on the command line: a t2i run with a LoRA writes what the pipeline API
gives with `load_lora_weights` at that scale and records the LoRA in the JSON sidecar; the
cascade's per-stage `--STAGE-lora` flags and bad values stop before anything loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.cli.sample import main  # noqa: E402
from mv2_jax.commands.lora_flags import LoraFlag, lora_flag  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.weights.tiny_models import tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.torch


def test_lora_flag_values():
    assert lora_flag("style.safetensors") == LoraFlag("style.safetensors", None)
    assert lora_flag("style.safetensors").weight == 1.0
    assert lora_flag("a/b:0.5") == LoraFlag("a/b", 0.5)
    assert lora_flag("C:/loras/x") == LoraFlag("C:/loras/x", None)  # not a number: a path
    assert lora_flag("x:-1e-1").scale == -0.1


def test_t2i_with_a_lora_writes_what_the_api_gives(tmp_path):
    folder = tmp_path / "sd"
    ref = tiny_pipeline(folder)
    state, config = tiny.lora_state(ref.unet, 1, r=4, target_modules=["to_q", "to_v"])
    (tmp_path / "lora").mkdir()
    path = tiny.save_diffusers(tmp_path / "lora", state, config)
    run = ["--steps", "3", "--scheduler", "ddim", "--seed", "5", "--height", "16", "--width", "16"]
    out = tmp_path / "out"
    argv = ["t2i", "--model", str(folder), "--prompt", "a cat", *run, "--lora", f"{path}:0.6"]
    assert main([*argv, "--out", str(out), "--compilation-cache", "none"]) == 0
    written = np.asarray(Image.open(out / "00000.png"))
    assert json.loads((out / "00000.json").read_text())["loras"] == [f"{path}:0.6"]

    pipe = mv2_jax.load_pipeline(folder)
    call = dict(num_inference_steps=3, scheduler="ddim", seed=5, height=16, width=16)
    plain = np.round(pipe("a cat", **call)[0] * 255).astype(np.uint8)
    pipe.load_lora_weights(path, scale=0.6)
    direct = np.round(pipe("a cat", **call)[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(written, direct)
    assert np.abs(plain.astype(int) - direct).max() > 10  # the LoRA changed the image


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--i2v-lora", "/no/such.safetensors:0.5"], "--i2v-lora /no/such.safetensors: no such"),
        (["--t2i-lora", "x:inf"], "'inf' is not a finite number"),
    ],
)
def test_cascade_lora_flags_are_checked_first(capsys, tmp_path, flags, message):
    argv = ["a red circle moving right", *flags, "--out", str(tmp_path / "v.mp4")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (the flag's type) exit from parse_args
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_t2v_and_t2i_take_the_few_step_loras_with_the_lcm_scheduler(monkeypatch, tmp_path):
    """`sample.py t2v … --scheduler lcm --lora AnimateLCM_sd15_t2v_lora.safetensors:0.8` and
    `t2i … --lora lcm-lora-sdv1-5/` (the published layouts, tests/lora/tiny.py) write what the
    API gives with that LoRA and scheduler."""
    from mv2_jax.commands import video as video_command
    from tests.pipelines.tiny import tiny_animatediff_pipeline

    written = []  # the frames handed to media.write_video (H.264 would blur the comparison)

    def write_and_keep(frames, path, fps, write=video_command.write_video):
        written.append(np.asarray(frames))
        return write(frames, path, fps=fps)

    monkeypatch.setattr(video_command, "write_video", write_and_keep)
    video = tiny_animatediff_pipeline(tmp_path / "ad")
    lora = tiny.save_lcm_lora(tmp_path / "AnimateLCM_sd15_t2v_lora.safetensors", video.unet, 1)
    run = ["--steps", "4", "--scheduler", "lcm", "--guidance-scale", "2", "--seed", "5",
           "--height", "16", "--width", "16", "--compilation-cache", "none"]  # fmt: skip
    argv = ["t2v", "--model", str(tmp_path / "ad"), "--prompt", "a fox", "--num-frames", "3"]
    out = tmp_path / "fox.mp4"
    assert main([*argv, *run, "--lora", f"{lora}:0.8", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["loras"] == [f"{lora}:0.8"] and meta["scheduler"] == "lcm"
    pipe = mv2_jax.load_pipeline(tmp_path / "ad")
    call = dict(num_inference_steps=4, scheduler="lcm", guidance_scale=2.0, seed=5, height=16,
                width=16, num_frames=3)  # fmt: skip
    plain = pipe("a fox", **call)[0]
    pipe.load_lora_weights(lora, scale=0.8)
    np.testing.assert_array_equal(written[0], pipe("a fox", **call)[0])
    assert np.abs(written[0] - plain).max() > 0.05  # the LoRA changed the video

    image = tiny_pipeline(tmp_path / "sd")
    (tmp_path / "lcm-lora-sdv1-5").mkdir()
    tiny.save_lcm_lora(tmp_path / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors",
                       image.unet, 2)  # fmt: skip
    argv = ["t2i", "--model", str(tmp_path / "sd"), "--prompt", "a cat", *run]
    run_lora = ["--lora", str(tmp_path / "lcm-lora-sdv1-5"), "--out", str(tmp_path / "img")]
    assert main([*argv, *run_lora]) == 0
    pipe = mv2_jax.load_pipeline(tmp_path / "sd")
    pipe.load_lora_weights(tmp_path / "lcm-lora-sdv1-5")
    call = {k: v for k, v in call.items() if k != "num_frames"}
    direct = np.round(pipe("a cat", **call)[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "img" / "00000.png")), direct)
