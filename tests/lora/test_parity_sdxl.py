"""LoRA on a whole SDXL pipeline against diffusers (random weights, fp32, images ≤ 2e-3): one
LoRA on the UNet (attention, proj_in / proj_out, resnet convolutions) and on both text
encoders, written in diffusers' layout (`save_lora_weights`: `unet.…`, `text_encoder.…`,
`text_encoder_2.…`, alphas in its metadata) and in kohya's SDXL layout (`lora_unet_` with the
LDM block names `input_blocks_…` / `middle_block_…` / `output_blocks_…`, `lora_te1_` /
`lora_te2_`, `.alpha` tensors); ours with `load_lora_weights(file, scale=s)`, diffusers'
with `load_lora_weights` + `fuse_lora(lora_scale=s)`, from the same latents. diffusers
(0.42) reads both layouts itself (its SGM-block renaming takes the tiny UNet's config), so both
are compared with diffusers' own loading."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.pipelines.tiny import tiny_sdxl_pipeline  # noqa: E402
from tests.weights.tiny_models import unet_key_to_ldm  # noqa: E402

pytestmark = pytest.mark.torch
TOLERANCE = 2e-3
PROMPTS = ["a photo of a cat", "two dogs"]
RUN = dict(num_inference_steps=4, guidance_scale=5.0)  # the folder's Euler, on both sides
UNET_TARGETS = rf"{tiny.ATTENTION}|.*attentions\.\d+\.proj_(in|out)|{tiny.RESNET_CONVS}"


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(pipeline folder, the diffusers pipeline, {layout: LoRA file}, latents [B, C, h, w])."""
    root = tmp_path_factory.mktemp("sdxl_lora")
    ref = tiny_sdxl_pipeline(root / "pipe")
    ref.set_progress_bar_config(disable=True)
    unet, unet_config = tiny.lora_state(ref.unet, 1, r=4, lora_alpha=6, target_modules=UNET_TARGETS)
    te1, te1_config = tiny.lora_state(ref.text_encoder, 2, r=2, target_modules=tiny.TEXT)
    te2, te2_config = tiny.lora_state(
        ref.text_encoder_2, 3, r=3, lora_alpha=2, target_modules=tiny.TEXT
    )
    (root / "diffusers").mkdir()
    diffusers.StableDiffusionXLPipeline.save_lora_weights(
        root / "diffusers",
        unet_lora_layers=unet,
        text_encoder_lora_layers=te1,
        text_encoder_2_lora_layers=te2,
        unet_lora_adapter_metadata=tiny.metadata(unet_config),
        text_encoder_lora_adapter_metadata=tiny.metadata(te1_config),
        text_encoder_2_lora_adapter_metadata=tiny.metadata(te2_config),
    )
    config = dict(ref.unet.config)
    ldm_unet = {_ldm_key(key, config): value for key, value in unet.items()}
    alphas = {key.rsplit(".lora_", 1)[0]: 6.0 for key in ldm_unet}
    # kohya names text-encoder modules as transformers 4 did (`text_model.encoder.…`), which
    # transformers 5's CLIPTextModel (not its CLIPTextModelWithProjection) leaves out.
    te1 = {f"text_model.{key}": value for key, value in te1.items()}
    alphas |= {m.rsplit(".lora_", 1)[0]: 2.0 for m in te2}  # te1: no alpha (= rank)
    kohya = tiny.save_kohya(
        root / "kohya.safetensors",
        {"lora_unet": ldm_unet, "lora_te1": te1, "lora_te2": te2},
        alphas,
    )
    files = {"diffusers": root / "diffusers" / "pytorch_lora_weights.safetensors", "kohya": kohya}
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8), np.float32)
    return root / "pipe", ref, files, latents


def _ldm_key(key: str, config: dict) -> str:
    """A peft UNet key `<module>.lora_A.weight` with its module in LDM names."""
    module, part = key.rsplit(".lora_", 1)
    return unet_key_to_ldm(f"{module}.weight", config).removesuffix(".weight") + f".lora_{part}"


def _diffusers_images(ref, path, scale, latents):
    ref.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    ref.fuse_lora(lora_scale=scale)
    try:
        return ref(PROMPTS, latents=torch.from_numpy(latents), output_type="np", **RUN).images
    finally:
        ref.unfuse_lora()
        ref.unload_lora_weights()


@pytest.mark.parametrize("layout,scale", [("diffusers", 0.7), ("kohya", -1.2)])
def test_sdxl_unet_and_text_encoders_lora_matches_diffusers(sdxl, layout, scale):
    folder, ref, files, latents = sdxl
    expected = _diffusers_images(ref, files[layout], scale, latents)
    pipe = mv2_jax.load_pipeline(folder)
    base = pipe(PROMPTS, latents=latents.transpose(0, 2, 3, 1), **RUN)
    before = pipe.lora_components()
    pipe.load_lora_weights(files[layout], scale=scale)
    after = pipe.lora_components()
    assert sorted(after) == ["text_encoder", "text_encoder_2", "unet"]
    assert all(after[c][1] is not before[c][1] for c in after)  # each one has the LoRA fused
    ours = pipe(PROMPTS, latents=latents.transpose(0, 2, 3, 1), **RUN)
    assert np.abs(ours - expected).max() <= TOLERANCE
    assert np.abs(base - expected).max() > 20 * TOLERANCE  # the LoRA changes the images
