"""LoRA on an SD1.x-like tiny UNet against diffusers + peft (random weights, fp32): diffusers'
`load_lora_weights` path + `fuse_lora(lora_scale=s)` vs `read_lora` + `merge_lora` at scale s,
for the diffusers (peft) layout with per-module ranks and alphas, kohya with LoCon convolutions
and `.alpha`, and two stacked adapters."""

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.lora import bind_lora, merge_lora, parse_lora, read_lora  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from tests.lora import tiny  # noqa: E402
from tests.reference import nchw_to_nhwc, randomize_, relative_error  # noqa: E402
from tests.weights.tiny_models import UNET  # noqa: E402

pytestmark = pytest.mark.torch

Q0 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """(torch UNet, mv2 module, mv2 params, inputs, folder for LoRA files)."""
    folder = tmp_path_factory.mktemp("sd")
    ref = randomize_(diffusers.UNet2DConditionModel(**UNET), seed=3)
    ref.save_pretrained(folder / "unet")
    module, params = mv2_jax.load_component(folder / "unet")
    rng = np.random.default_rng(0)
    inputs = (
        rng.standard_normal((2, 4, 8, 8), np.float32),
        np.array([3.0, 741.0], np.float32),
        rng.standard_normal((2, 7, 32), np.float32),
    )
    apply = jax.jit(lambda p, x, t, c: module.apply({"params": p}, x.transpose(0, 2, 3, 1), t, c))
    return ref, (module, apply), params, inputs, folder


@pytest.fixture(scope="module")
def attention_lora(unet):
    """diffusers layout: rank 4 (2 on one module), alpha 8 (3 on another), in its metadata."""
    ref, *_, folder = unet
    state, config = tiny.lora_state(
        ref,
        seed=1,
        r=4,
        lora_alpha=8,
        target_modules=tiny.ATTENTION,
        rank_pattern={Q0: 2},
        alpha_pattern={"up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": 3},
    )
    return tiny.save_diffusers(folder / "attention", state, config)


@pytest.fixture(scope="module")
def conv_lora(unet):
    """kohya layout: LoCon on the resnets' 3×3 and 1×1 convolutions and the attention's
    proj_in / proj_out, rank 3, `.alpha` 6 (1.5 on one conv)."""
    ref, *_, folder = unet
    targets = rf"{tiny.RESNET_CONVS}|.*attentions\.\d+\.proj_(in|out)"
    state, _ = tiny.lora_state(ref, seed=2, r=3, lora_alpha=3, target_modules=targets)
    modules = {key.rsplit(".lora_", 1)[0] for key in state}
    alphas = {m: 6.0 for m in modules} | {"up_blocks.0.resnets.0.conv_shortcut": 1.5}
    assert "up_blocks.0.resnets.0.conv_shortcut" in modules  # a 1×1 conv is among them
    return tiny.save_kohya(folder / "locon.safetensors", {"lora_unet": state}, alphas)


def _compare(unet, files):
    ref, (module, apply), params, (sample, t, context), _ = unet
    fused_ref = tiny.diffusers_fused(ref, files)
    with torch.no_grad():
        expected = fused_ref(*(torch.from_numpy(x) for x in (sample, t, context))).sample
    loras = [(bind_lora(read_lora(path), "unet", module, params), s) for path, s in files]
    fused = merge_lora(params, loras)
    actual, base = apply(fused, sample, t, context), apply(params, sample, t, context)
    expected = nchw_to_nhwc(expected.numpy())
    assert relative_error(base, expected) > 1e-2  # the LoRA changes the output
    assert relative_error(actual, expected) <= 1e-4


def test_diffusers_layout_per_module_ranks_and_alphas(unet, attention_lora):
    adapter = read_lora(attention_lora.parent)  # the folder, as diffusers is given it
    weights = adapter.modules("unet")
    assert adapter.format == "diffusers" and weights[Q0].rank == 2
    assert weights[Q0].multiplier == 8 / 2
    assert weights["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"].alpha == 3
    _compare(unet, [(attention_lora, 0.7)])


def test_kohya_locon_convolutions_with_alpha(unet, conv_lora):
    adapter = read_lora(conv_lora)
    assert adapter.naming == "kohya"
    assert adapter.modules("unet")["up_blocks_0_resnets_0_conv1"].down.ndim == 4
    _compare(unet, [(conv_lora, 1.3)])


def test_two_stacked_adapters(unet, attention_lora, conv_lora):
    _compare(unet, [(attention_lora, 0.6), (conv_lora, -0.8)])


def test_lora_of_another_model_lists_every_bad_key(unet):
    _, (module, _), params, *_ = unet
    rng = np.random.default_rng(1)
    k2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    motion = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    state = {
        f"unet.{Q0}.lora_A.weight": rng.standard_normal((2, 16)),  # fits
        f"unet.{Q0}.lora_B.weight": rng.standard_normal((16, 2)),
        f"unet.{motion}.lora_A.weight": rng.standard_normal((2, 16)),  # no such module
        f"unet.{motion}.lora_B.weight": rng.standard_normal((16, 2)),
        f"unet.{k2}.lora_A.weight": rng.standard_normal((2, 24)),  # cross_attention_dim 24
        f"unet.{k2}.lora_B.weight": rng.standard_normal((16, 2)),
    }
    with pytest.raises(WeightMismatchError) as info:
        bind_lora(parse_lora(state, source="other.safetensors"), "unet", module, params)
    error = info.value
    assert error.unexpected == [f"unet.{motion}"] and len(error.misshaped) == 1
    assert k2.replace(".", "_") in error.misshaped[0][0].replace("/", "_")
    assert "other.safetensors" in str(error) and Q0 not in str(error)


def test_kohya_names_of_no_module_are_listed(unet):
    _, (module, _), params, *_ = unet
    down, up = np.ones((2, 32), np.float32), np.ones((32, 2), np.float32)
    state = {
        "lora_unet_mid_block_attentions_0_proj_out.lora_down.weight": down,
        "lora_unet_mid_block_attentions_0_proj_out.lora_up.weight": up,
        "lora_unet_mid_block_attentions_7_proj_out.lora_down.weight": down,
        "lora_unet_mid_block_attentions_7_proj_out.lora_up.weight": up,
    }
    with pytest.raises(WeightMismatchError) as info:
        bind_lora(parse_lora(state), "unet", module, params)
    assert info.value.unexpected == ["unet.mid_block_attentions_7_proj_out"]


def test_ldm_block_names_map_back_to_every_unet_module(unet):
    """kohya's SDXL names (LDM blocks, `mv2_jax.lora.kohya_ldm`) of every module with a weight,
    made by the inverse of diffusers' own single-file mapping (tests/weights/tiny_models)."""
    from mv2_jax.lora.kohya_ldm import ldm_renamer
    from tests.weights.tiny_models import unet_key_to_ldm

    ref, _, params, *_ = unet
    rename = ldm_renamer(traverse_util.flatten_dict(params))
    names = [n for n, m in ref.named_modules() if getattr(m, "weight", None) is not None]
    for name in names:
        ldm = unet_key_to_ldm(f"{name}.weight", dict(ref.config)).removesuffix(".weight")
        assert rename(ldm.replace(".", "_")) == name.replace(".", "_"), (name, ldm)
    assert len(names) > 40
