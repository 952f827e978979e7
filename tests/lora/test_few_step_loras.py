"""The published few-step weights on whole pipelines against diffusers (random weights in the
files' own layouts, fp32 compute, frames / images ≤ 2e-3), each run with the LCM scheduler as
its model card runs it:

- AnimateLCM: its motion adapter as the original `AnimateLCM_sd15_t2v.ckpt` (AnimateDiff v2
  layout: a motion mid block, 32 positions) added to an SD1.5 folder by convert/to_flax.py, and
  its LoRA (`AnimateLCM_sd15_t2v_lora.safetensors`) at 0.8 through `set_adapters`, guidance 2
  with a negative prompt, vs AnimateDiffPipeline on diffusers' MotionAdapter folder of the same
  weights + `LCMScheduler.from_config(…, beta_schedule="linear")` + `load_lora_weights`;
- LCM-LoRA SD1.5 on the T2I pipeline (no guidance) vs StableDiffusionPipeline;
- LCM-LoRA SDXL on the SDXL pipeline vs StableDiffusionXLPipeline.

The multistep LCM re-noises between steps: diffusers' draws are replaced by ours
(`mv2_jax.diffusion.sampler.step_noise`), so both sides add the same noise."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

from safetensors.numpy import load_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.lora import read_lora  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.pipelines.tiny import tiny_motion_adapter, tiny_sdxl_pipeline  # noqa: E402
from tests.reference import diffusers_draws_our_step_noise  # noqa: E402
from tests.weights.test_animatediff import original_layout  # noqa: E402
from tests.weights.tiny_models import load_cli, tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.torch
TOLERANCE = 2e-3
PROMPTS = ["a photo of a cat", "two dogs"]
SEED = 3  # our per-step noise; the starting latents are given to both sides
# AnimateLCM's motion modules: AnimateDiff v2's layout (8 heads, a mid block, 32 positions).
ANIMATELCM_ADAPTER = dict(
    motion_num_attention_heads=8, use_motion_mid_block=True, motion_max_seq_length=32
)


def with_sd15_betas(folder) -> dict:
    """Give the pipeline `folder` SD1.5's betas (the tiny folders have PNDM's defaults, whose
    ᾱ at t = 999 is 100× smaller and would blow a one-step x₀ estimate up by 160×); its
    scheduler config."""
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    path.write_text(json.dumps(config))
    return config


def _reference_run(ref, lora, latents, steps, weight=None, scheduler=None, **call):
    """diffusers' output with the LoRA file loaded (at `weight` through `set_adapters`), under
    the LCM scheduler on the pipeline's own config (`scheduler`: overrides, as model cards
    give them)."""
    config = ref.scheduler.config
    ref.scheduler = diffusers.LCMScheduler.from_config(config, **(scheduler or {}))
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lcm-lora")
    if weight is not None:
        ref.set_adapters(["lcm-lora"], [weight])
    with diffusers_draws_our_step_noise(SEED) as draws:
        out = ref(PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=steps,
                  output_type="np", **call)  # fmt: skip
    assert len(draws) == steps - 1  # the re-noising really ran (and took our noise)
    return out


@pytest.fixture(scope="module")
def animatelcm(tmp_path_factory):
    """(our pipeline folder, diffusers' AnimateDiffPipeline, the LoRA file), as downloaded:
    `AnimateLCM/` (MotionAdapter folder), `AnimateLCM_sd15_t2v.ckpt`, the LoRA."""
    root = tmp_path_factory.mktemp("animatelcm")
    sd = tiny_pipeline(root / "sd")
    with_sd15_betas(root / "sd")  # diffusers reads them from the folder below
    adapter = tiny_motion_adapter(seed=6, **ANIMATELCM_ADAPTER)
    adapter.save_pretrained(root / "AnimateLCM")
    torch.save(original_layout(adapter), root / "AnimateLCM_sd15_t2v.ckpt")
    lora = tiny.save_lcm_lora(root / "AnimateLCM_sd15_t2v_lora.safetensors", sd.unet, seed=7)
    argv = [str(root / "sd"), "--motion-adapter", str(root / "AnimateLCM_sd15_t2v.ckpt")]
    assert load_cli().main([*argv, "--out", str(root / "ours")]) == 0
    motion = diffusers.MotionAdapter.from_pretrained(root / "AnimateLCM")
    ref = diffusers.AnimateDiffPipeline.from_pretrained(root / "sd", motion_adapter=motion)
    return root / "ours", ref, lora


def test_the_lora_layout_is_read_as_published(animatelcm):
    _, _, lora = animatelcm
    state = load_file(lora)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{q}.lora_down.weight", f"{q}.lora_up.weight", f"{q}.alpha"} <= set(state)
    assert {v.dtype for v in state.values()} == {np.dtype(np.float16)}
    assert "lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight" in state
    assert "lora_unet_mid_block_resnets_0_time_emb_proj.alpha" in state
    assert not any("motion" in key for key in state)
    adapter = read_lora(lora)
    assert adapter.naming == "kohya" and adapter.modules("unet")[q[10:]].multiplier == 1 / 8


def test_animatelcm_matches_diffusers(animatelcm):
    folder, ref, lora = animatelcm
    steps, latents = 4, np.random.default_rng(0).standard_normal((2, 4, 3, 8, 8), np.float32)
    call = dict(guidance_scale=2.0, negative_prompt=["blurry", "dark"], num_frames=3,
                height=16, width=16)  # fmt: skip
    expected = _reference_run(
        ref, lora, latents, steps, weight=0.8, scheduler=dict(beta_schedule="linear"), **call
    ).frames

    pipe = mv2_jax.load_pipeline(folder)
    run = dict(scheduler="lcm", num_inference_steps=steps, seed=SEED, **call)
    ours_latents = latents.transpose(0, 2, 3, 4, 1)
    base = pipe(PROMPTS, latents=ours_latents, **run)
    pipe.load_lora_weights(lora, adapter_name="lcm-lora")
    pipe.set_adapters(["lcm-lora"], [0.8])
    ours = pipe(PROMPTS, latents=ours_latents, **run)
    assert ours.shape == expected.shape == (2, 3, 16, 16, 3)
    assert np.abs(ours - expected).max() <= TOLERANCE  # measured 1.3e-6
    assert np.abs(base - expected).max() > 20 * TOLERANCE  # the LoRA changes the frames


def _t2i_with_lora_matches_diffusers(ref, folder, lora, latents, steps, ours_lora=None):
    """LCM-LoRA's usual call (no guidance) on both sides, ours loading `ours_lora` (default: the
    file `lora`): (the largest difference, our pipeline)."""
    call = dict(guidance_scale=1.0, height=16, width=16)
    expected = _reference_run(ref, lora, latents, steps, **call).images
    pipe = mv2_jax.load_pipeline(folder)
    run = dict(scheduler="lcm", num_inference_steps=steps, seed=SEED, **call)
    base = pipe(PROMPTS, latents=latents.transpose(0, 2, 3, 1), **run)
    pipe.load_lora_weights(ours_lora or lora)
    ours = pipe(PROMPTS, latents=latents.transpose(0, 2, 3, 1), **run)
    assert np.abs(base - expected).max() > 20 * TOLERANCE  # the LoRA changes the images
    return float(np.abs(ours - expected).max()), pipe


def test_lcm_lora_sd15_matches_diffusers(tmp_path):
    ref = tiny_pipeline(tmp_path / "sd")
    ref.scheduler = diffusers.PNDMScheduler.from_config(with_sd15_betas(tmp_path / "sd"))
    (tmp_path / "lcm-lora-sdv1-5").mkdir()  # the folder, as it is downloaded
    lora = tiny.save_lcm_lora(
        tmp_path / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors", ref.unet, seed=8
    )
    latents = np.random.default_rng(1).standard_normal((2, 4, 8, 8), np.float32)
    error, _ = _t2i_with_lora_matches_diffusers(ref, tmp_path / "sd", lora, latents, 4, lora.parent)
    assert error <= TOLERANCE  # measured 1.0e-6


def test_lcm_lora_sdxl_matches_diffusers(tmp_path, animatelcm):
    ref = tiny_sdxl_pipeline(tmp_path / "sdxl")  # SDXL's own betas already
    lora = tiny.save_lcm_lora(tmp_path / "lcm-lora-sdxl.safetensors", ref.unet, seed=9)
    names = load_file(lora)  # diffusers' block names, not kohya's SDXL (LDM) ones
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn2_to_k.alpha" in names
    latents = np.random.default_rng(2).standard_normal((2, 4, 8, 8), np.float32)
    error, pipe = _t2i_with_lora_matches_diffusers(ref, tmp_path / "sdxl", lora, latents, 3)
    assert error <= TOLERANCE  # measured 1.5e-6
    # An SD1.5 LoRA (AnimateLCM's) on SDXL: stopped, its mis-shaped cross-attention listed.
    before = pipe.lora_components()["unet"][1]
    with pytest.raises(WeightMismatchError, match="another model") as info:
        pipe.load_lora_weights(animatelcm[2], adapter_name="wrong")
    assert any("attn2" in where for where, *_ in info.value.misshaped)
    assert pipe.lora_components()["unet"][1] is before and pipe.get_list_adapters() == ["default_0"]
