"""`convert/to_flax.py --lora PATH[:SCALE] --lora-scale S`: a pipeline folder with the LoRAs
fused into its UNet and text encoder gives the images of the plain conversion with
`load_lora_weights` at the same scales; a LoRA that does not fit, a missing file, a scale that
is not finite and a component folder stop with one line before anything is written."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.commands.lora_flags import LoraFlag, lora_flag  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.weights.tiny_models import load_cli, tiny_pipeline, tiny_unet  # noqa: E402

pytestmark = pytest.mark.torch
to_flax = load_cli()
PROMPTS = ["a photo of a cat", "two dogs"]
RUN = dict(num_inference_steps=3, guidance_scale=7.5, scheduler="ddim")


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(pipeline folder, LoRA a: UNet attention, diffusers layout; LoRA b: kohya LoCon on
    the resnets + the text encoder; the plain conversion)."""
    root = tmp_path_factory.mktemp("convert_lora")
    ref = tiny_pipeline(root / "pipe")
    unet, unet_config = tiny.lora_state(ref.unet, 1, r=4, target_modules=tiny.ATTENTION)
    (root / "a").mkdir()
    file_a = tiny.save_diffusers(root / "a", unet, unet_config)
    convs, _ = tiny.lora_state(ref.unet, 3, r=3, target_modules=tiny.RESNET_CONVS)
    text, _ = tiny.lora_state(ref.text_encoder, 2, r=2, target_modules=tiny.TEXT)
    text = {f"text_model.{key}": value for key, value in text.items()}  # kohya's names
    file_b = tiny.save_kohya(root / "b.safetensors", {"lora_unet": convs, "lora_te": text})
    assert to_flax.main([str(root / "pipe"), "--out", str(root / "plain")]) == 0
    return root / "pipe", file_a, file_b, root / "plain"


def test_fused_conversion_equals_load_lora_weights(sd, tmp_path, capsys):
    src, file_a, file_b, plain = sd
    argv = [src, "--out", tmp_path / "out", "--lora", f"{file_a}:0.7", "--lora", file_b]
    assert to_flax.main([str(a) for a in [*argv, "--lora-scale", "-1.3"]]) == 0
    log = capsys.readouterr().out
    assert "unet: 2 LoRA(s) fused" in log and "text_encoder: 1 LoRA(s) fused" in log
    latents = np.random.default_rng(0).standard_normal((2, 8, 8, 4), np.float32)
    fused = mv2_jax.load_pipeline(tmp_path / "out")(PROMPTS, latents=latents, **RUN)
    pipe = mv2_jax.load_pipeline(plain)
    base = pipe(PROMPTS, latents=latents, **RUN)
    pipe.load_lora_weights(file_a, scale=0.7)
    pipe.load_lora_weights(file_b, scale=-1.3)
    expected = pipe(PROMPTS, latents=latents, **RUN)
    assert np.abs(fused - expected).max() <= 1e-5
    assert np.abs(base - expected).max() > 1e-2  # the LoRAs change the images


def test_a_lora_that_does_not_fit_writes_nothing(sd, tmp_path, capsys):
    src, *_ = sd
    other = tiny_unet(cross_attention_dim=24)
    state, config = tiny.lora_state(other, 5, r=2, target_modules=["to_k"])
    (tmp_path / "wrong").mkdir()
    wrong = tiny.save_diffusers(tmp_path / "wrong", state, config)
    out = tmp_path / "out"
    assert to_flax.main([str(src), "--out", str(out), "--lora", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert "attn2_to_k" in err.replace(".", "_").replace("/", "_") and "wrong" in err
    assert not out.exists() and not out.with_name("out.partial").exists()


def test_flag_errors_are_one_line(sd, tmp_path, capsys):
    src, file_a, *_ = sd
    out = str(tmp_path / "out")
    for extra, message in [
        (["--lora", str(tmp_path / "none.safetensors")], "no such LoRA file or folder"),
        (["--lora", str(file_a), "--lora-scale", "inf"], "finite"),
    ]:
        assert to_flax.main([str(src), "--out", out, *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert to_flax.main([str(src / "unet"), "--out", out, "--lora", str(file_a)]) == 1
    assert "one component's folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the flag's own type: a usage error
        to_flax.main([str(src), "--out", out, "--lora", f"{file_a}:nan"])
    assert exit_.value.code == 2 and "is not a finite number" in capsys.readouterr().err


def test_lora_flag_reads_an_optional_scale():
    assert lora_flag("a.safetensors") == LoraFlag("a.safetensors", None)
    assert lora_flag("a.safetensors:0.5") == LoraFlag("a.safetensors", 0.5)
    assert lora_flag("C:/x/a.safetensors") == LoraFlag("C:/x/a.safetensors", None)
    assert lora_flag("dir:1/a:-2") == LoraFlag("dir:1/a", -2.0)
