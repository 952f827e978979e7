"""LoRA on whole pipelines against diffusers (random weights, fp32, images ≤ 2e-3): an SD1.x
pipeline with a UNet + text-encoder LoRA at a scale, two stacked adapters, and an AnimateDiff
pipeline with a motion LoRA; and the pipeline API's own promises: no recompile when adapters or
weights change, fuse / unfuse / set_adapters / unload semantics, the base params back
bit-exactly, a LoRA that does not fit refused before anything changes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.pipelines.tiny import tiny_animatediff_pipeline, tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.torch
TOLERANCE = 2e-3
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
PROMPTS = ["a photo of a cat", "two dogs"]
RUN = dict(num_inference_steps=4, guidance_scale=7.5)
OURS = dict(RUN, scheduler="ddim")  # the tiny folders' PNDM is not ours: both run DDIM


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(pipeline folder, the diffusers pipeline, LoRA files a (UNet + text encoder) and b)."""
    root = tmp_path_factory.mktemp("sd_lora")
    tiny_pipeline(root / "pipe")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(root / "pipe")
    ref.scheduler = diffusers.DDIMScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    unet_a, config_a = tiny.lora_state(ref.unet, 1, r=4, lora_alpha=6, target_modules=ATTENTION)
    text_a, text_config = tiny.lora_state(ref.text_encoder, 2, r=2, target_modules=tiny.TEXT)
    (root / "a").mkdir()
    file_a = tiny.save_diffusers(
        root / "a",
        unet_a,
        config_a,
        text_encoder_lora_layers=text_a,
        text_encoder_lora_adapter_metadata=tiny.metadata(text_config),
    )
    unet_b, config_b = tiny.lora_state(ref.unet, 3, r=3, target_modules=["proj_in", "to_k"])
    (root / "b").mkdir()
    file_b = tiny.save_diffusers(root / "b", unet_b, config_b)
    return root / "pipe", ref, file_a, file_b


def _latents(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _diffusers_images(ref, files, weights, fuse_scale):
    ref.unload_lora_weights()
    names = []
    for i, path in enumerate(files):
        ref.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"r{i}")
        names.append(f"r{i}")
    ref.set_adapters(names, weights)
    ref.fuse_lora(lora_scale=fuse_scale, adapter_names=names)
    latents = _latents((2, 4, 8, 8))
    out = ref(PROMPTS, latents=torch.from_numpy(latents), output_type="np", **RUN).images
    ref.unfuse_lora()
    ref.unload_lora_weights()
    return out, latents.transpose(0, 2, 3, 1)


def test_sd_unet_and_text_encoder_lora_matches_diffusers(sd):
    folder, ref, file_a, _ = sd
    expected, latents = _diffusers_images(ref, [file_a], [1.0], 0.7)
    pipe = mv2_jax.load_pipeline(folder)
    base = pipe(PROMPTS, latents=latents, **OURS)
    pipe.load_lora_weights(file_a, adapter_name="a", scale=0.7)
    ours = pipe(PROMPTS, latents=latents, **OURS)
    assert np.abs(ours - expected).max() <= TOLERANCE
    assert np.abs(base - expected).max() > 20 * TOLERANCE  # the LoRA changes the images


def test_two_stacked_adapters_match_diffusers(sd):
    folder, ref, file_a, file_b = sd
    expected, latents = _diffusers_images(ref, [file_a, file_b], [0.6, -0.8], 1.0)
    pipe = mv2_jax.load_pipeline(folder)
    pipe.load_lora_weights(file_a, adapter_name="a")
    pipe.load_lora_weights(file_b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.6, -0.8])
    assert np.abs(pipe(PROMPTS, latents=latents, **OURS) - expected).max() <= TOLERANCE


def test_api_semantics_without_recompiling(sd):
    folder, _, file_a, file_b = sd
    pipe = mv2_jax.load_pipeline(folder)
    base_unet, base_text = pipe.unet_params, pipe.text.encoders[0].params
    latents = _latents((2, 4, 8, 8), seed=4).transpose(0, 2, 3, 1)

    def images():
        return pipe(PROMPTS, latents=latents, **OURS)

    plain = images()
    traces = pipe.trace_count
    pipe.load_lora_weights(file_a, adapter_name="a", scale=0.5)
    pipe.load_lora_weights(file_b, adapter_name="b", scale=1.0)
    both = images()
    assert pipe.get_active_adapters() == ["a", "b"]
    pipe.set_adapters("a", 0.5)
    only_a = images()
    pipe.fuse_lora(lora_scale=2.0)  # a at 0.5 × 2 = 1.0, baked in; b stays off
    fused = images()
    pipe.unfuse_lora()
    pipe.set_adapters("a", 1.0)
    np.testing.assert_allclose(images(), fused, atol=1e-6)  # fused at 1.0 == active at 1.0
    pipe.set_adapters("a", 0.5)
    np.testing.assert_array_equal(images(), only_a)  # always fused from the base: no drift
    pipe.disable_lora()
    np.testing.assert_array_equal(images(), plain)
    assert pipe.trace_count == traces  # adapters and weights are arguments: nothing recompiled
    assert np.abs(both - only_a).max() > 1e-3 and np.abs(only_a - plain).max() > 1e-3
    pipe.unload_lora_weights()
    assert pipe.unet_params is base_unet and pipe.text.encoders[0].params is base_text
    assert pipe.get_list_adapters() == []


def test_bad_calls_change_nothing(sd, tmp_path):
    folder, ref, file_a, _ = sd
    pipe = mv2_jax.load_pipeline(folder)
    base = pipe.unet_params
    pipe.load_lora_weights(file_a, adapter_name="a")
    with pytest.raises(ValueError, match="named 'a' is loaded already"):
        pipe.load_lora_weights(file_a, adapter_name="a")
    with pytest.raises(ValueError, match=r"no adapter named \['c'\]"):
        pipe.set_adapters(["a", "c"])
    with pytest.raises(ValueError, match="finite"):
        pipe.set_adapters("a", float("nan"))
    with pytest.raises(ValueError, match="must be a number, got '1'"):
        pipe.set_adapters("a", "1")
    fused_a = pipe.unet_params
    other = diffusers.UNet2DConditionModel(**{**dict(ref.unet.config), "cross_attention_dim": 24})
    state, config = tiny.lora_state(other, 5, r=2, target_modules=["to_k"])
    (tmp_path / "wrong").mkdir()
    wrong = tiny.save_diffusers(tmp_path / "wrong", state, config)
    with pytest.raises(WeightMismatchError, match=r"attn2\.to_k"):
        pipe.load_lora_weights(wrong, adapter_name="wrong")
    assert pipe.unet_params is fused_a and pipe.get_list_adapters() == ["a"]
    pipe.unload_lora_weights()
    assert pipe.unet_params is base


def test_animatediff_motion_lora_matches_diffusers(tmp_path):
    ref = tiny_animatediff_pipeline(tmp_path / "pipe")
    ref.set_progress_bar_config(disable=True)
    state, _ = tiny.lora_state(ref.unet, 7, r=4, target_modules=tiny.MOTION)
    published, _ = tiny.motion_layouts(state)  # that layout keeps no alpha: alpha = rank
    from safetensors.torch import save_file

    save_file(published, str(tmp_path / "motion.safetensors"))
    ref.load_lora_weights(str(tmp_path), weight_name="motion.safetensors", adapter_name="m")
    ref.fuse_lora(lora_scale=0.8)
    frames, size = 4, 8
    latents = _latents((1, 4, frames, size, size))
    run = dict(num_frames=frames, num_inference_steps=3, guidance_scale=7.5)
    expected = ref("a cat", latents=torch.from_numpy(latents), output_type="np", **run).frames
    pipe = mv2_jax.load_pipeline(tmp_path / "pipe")
    plain = pipe("a cat", latents=latents.transpose(0, 2, 3, 4, 1), **run)
    pipe.load_lora_weights(tmp_path / "motion.safetensors", scale=0.8)
    ours = pipe("a cat", latents=latents.transpose(0, 2, 3, 4, 1), **run)
    assert np.abs(ours - np.asarray(expected)).max() <= TOLERANCE
    assert np.abs(plain - np.asarray(expected)).max() > 20 * TOLERANCE
