"""AnimateDiff motion LoRAs on a tiny `UNetMotionModel` against diffusers + peft (random
weights, fp32): the layout diffusers publishes (`unet.….attn1.processor.to_q_lora.down.weight`),
AnimateDiff's original `.ckpt` (`….temporal_transformer.….attention_blocks.0.processor.
to_q_lora…`) and the peft layout all fuse to what diffusers' `load_lora_weights` +
`fuse_lora(lora_scale=s)` gives."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.lora import bind_lora, merge_lora, read_lora  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.reference import randomize_, relative_error  # noqa: E402
from tests.weights.tiny_models import MOTION_UNET  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """(torch UNet, mv2 module and params, {layout: LoRA file}, reference output, inputs)."""
    folder = tmp_path_factory.mktemp("motion")
    ref = randomize_(diffusers.UNetMotionModel(**MOTION_UNET), seed=4)
    ref.save_pretrained(folder / "unet")
    module, params = mv2_jax.load_component(folder / "unet")
    state, _ = tiny.lora_state(ref, seed=5, r=4, lora_alpha=4, target_modules=tiny.MOTION)
    published, original = tiny.motion_layouts(state)
    files = {
        "published": folder / "diffusion_pytorch_model.safetensors",
        "original": folder / "v2_lora_Tiny.ckpt",
        "peft": tiny.save_diffusers(folder / "peft", state),
    }
    from safetensors.torch import save_file

    save_file(published, str(files["published"]))
    torch.save(original, files["original"])
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, 3, 8, 8, 4), np.float32)  # [B, F, H, W, C]
    t = np.array([412.0], np.float32)
    context = rng.standard_normal((1, 5, 24), np.float32)
    fused = tiny.diffusers_fused(ref, [(files["published"], 0.8)], diffusers.AnimateDiffPipeline)
    with torch.no_grad():
        expected = fused(
            torch.from_numpy(sample).permute(0, 4, 1, 2, 3),
            torch.from_numpy(t),
            torch.from_numpy(context).repeat_interleave(3, 0),
        ).sample.permute(0, 2, 3, 4, 1)
    return module, params, files, expected.numpy(), (sample, t, context)


@pytest.mark.parametrize("layout", ["published", "original", "peft"])
def test_motion_lora_matches_diffusers(motion, layout):
    module, params, files, expected, inputs = motion
    adapter = read_lora(files[layout])
    names = set(adapter.modules("unet"))
    assert "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q" in names
    assert "up_blocks.1.motion_modules.1.transformer_blocks.0.attn2.to_out.0" in names
    fused = merge_lora(params, [(bind_lora(adapter, "unet", module, params), 0.8)])
    base = module.apply({"params": params}, *inputs)
    assert relative_error(base, expected) > 1e-2
    assert relative_error(module.apply({"params": fused}, *inputs), expected) <= 1e-4
