"""IP-Adapter parity with diffusers (random weights, fp32): a random checkpoint in the original
layout is loaded into diffusers' UNets (`_load_ip_adapter_weights`, what `load_ip_adapter` calls)
and into ours (`mv2_jax.weights.ip_adapter.load_ip_adapter`), for UNet2DConditionModel and
UNetMotionModel, at adapter scales 0 and 0.7; plus the loader's errors."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.numpy import save_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.models.unet import UNet2DConditionModel  # noqa: E402
from mv2_jax.weights.ip_adapter import load_ip_adapter  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from mv2_jax.weights.safetensors_io import CheckpointFileError  # noqa: E402
from tests.reference import randomize_, relative_error  # noqa: E402
from tests.weights.tiny_models import MOTION_UNET  # noqa: E402

pytestmark = pytest.mark.torch

FP32_TOL = 1e-4
CROSS, IMAGE_DIM, BATCH = 24, 20, 2

# Cross-attentions in down, up and mid blocks of two widths, two transformer layers in some, so
# that numbering them in any other order than diffusers' gives wrong (or mis-shaped) weights.
UNET_2D = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    transformer_layers_per_block=(1, 2),
    attention_head_dim=2,
    norm_num_groups=8,
    cross_attention_dim=CROSS,
    sample_size=8,
)
# The motion UNet interleaves motion modules (whose attentions diffusers skips when numbering).
UNET_MOTION = MOTION_UNET
assert MOTION_UNET["cross_attention_dim"] == CROSS


def _reference(kind: str, tmp_path, seed: int = 0):
    """A random diffusers UNet saved to `tmp_path/unet`, and ours loaded from there."""
    if kind == "2d":
        ref = diffusers.UNet2DConditionModel(**UNET_2D)
    else:
        ref = diffusers.UNetMotionModel(**UNET_MOTION)
    randomize_(ref, seed=seed)
    ref.save_pretrained(tmp_path / "unet")
    module, params = mv2_jax.load_component(tmp_path / "unet")
    return ref, module, params


def random_adapter(
    ref, seed: int = 1, cross: int = CROSS, image_dim: int = IMAGE_DIM
) -> dict[str, np.ndarray]:
    """An IP-Adapter checkpoint for `ref` in the original flat layout: shapes from diffusers'
    own attention processors, numbered 1, 3, 5, … over its cross-attentions."""
    rng = np.random.default_rng(seed)
    state = {
        "image_proj.proj.weight": rng.standard_normal((4 * cross, image_dim)) / np.sqrt(image_dim),
        "image_proj.proj.bias": 0.1 * rng.standard_normal(4 * cross),
        "image_proj.norm.weight": 1 + 0.1 * rng.standard_normal(cross),
        "image_proj.norm.bias": 0.1 * rng.standard_normal(cross),
    }
    names = [n for n in ref.attn_processors if "attn2" in n and "motion_modules" not in n]
    for k, name in enumerate(names):
        attn2 = ref.get_submodule(name.removesuffix(".processor"))
        hidden = attn2.to_k.weight.shape[0]
        for kv in "kv":
            w = rng.standard_normal((hidden, cross)) / np.sqrt(cross)
            state[f"ip_adapter.{2 * k + 1}.to_{kv}_ip.weight"] = w
    return {k: np.asarray(v, np.float32) for k, v in state.items()}


def _load_into_diffusers(ref, state: dict[str, np.ndarray]):
    nested = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, name = key.split(".", 1)
        nested[group][name] = torch.from_numpy(value)
    ref._load_ip_adapter_weights([nested])


def _set_scale(ref, scale: float):
    for processor in ref.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = [scale]


def _inputs(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (BATCH, 8, 8, 4) if kind == "2d" else (BATCH, 3, 8, 8, 4)
    return (
        rng.standard_normal(shape, np.float32),
        np.array([3.0, 741.0], np.float32),
        rng.standard_normal((BATCH, 7, CROSS), np.float32),
        rng.standard_normal((BATCH, IMAGE_DIM), np.float32),
    )


def _torch_output(ref, kind, sample, t, text, image_embeds):
    """diffusers' output, channels-last. Its motion UNet repeats the image embeddings over the
    frames itself but takes the text once per frame (as AnimateDiffPipeline passes it)."""
    added = {"image_embeds": [torch.from_numpy(image_embeds)[:, None]]}
    x, text = torch.from_numpy(sample), torch.from_numpy(text)
    if kind == "2d":
        x = x.permute(0, 3, 1, 2)
    else:
        x = x.permute(0, 4, 1, 2, 3)
        text = text.repeat_interleave(sample.shape[1], 0)
    with torch.no_grad():
        out = ref(x, torch.from_numpy(t), text, added_cond_kwargs=added).sample
    return out.permute(0, 2, 3, 1) if kind == "2d" else out.permute(0, 2, 3, 4, 1)


@pytest.mark.parametrize("kind", ["2d", "motion"])
def test_matches_diffusers(kind, tmp_path):
    ref, module, params = _reference(kind, tmp_path)
    state = random_adapter(ref)
    save_file(state, tmp_path / "ip-adapter.safetensors")
    sample, t, text, image_embeds = _inputs(kind)

    ip_module, ip_params = load_ip_adapter(tmp_path / "ip-adapter.safetensors", module, params)
    assert ip_module.encoder_hid_dim_type == "ip_image_proj"
    assert set(ip_params["encoder_hid_proj"]) == {"image_projection_layers_0"}

    @jax.jit
    def run(p, scale):
        added = {"image_embeds": image_embeds, "ip_adapter_scale": scale}
        return ip_module.apply({"params": p}, sample, t, text, added_cond_kwargs=added)

    # diffusers skips the image branch at scale 0: that reference is the UNet without adapter.
    _load_into_diffusers(ref, state)
    errors, expected = {}, {}
    for scale in (0.0, 0.7):
        _set_scale(ref, scale)
        expected[scale] = _torch_output(ref, kind, sample, t, text, image_embeds).numpy()
        actual = np.asarray(run(ip_params, np.full(BATCH, scale, np.float32)))
        errors[scale] = relative_error(actual, expected[scale])
    assert max(errors.values()) <= FP32_TOL, errors
    assert relative_error(expected[0.7], expected[0.0]) > 1e-2  # the adapter matters
    # A per-sample scale `[B]`, traced: the same compiled program serves every scale.
    mixed = np.asarray(run(ip_params, np.array([0.0, 0.7], np.float32)))
    assert relative_error(mixed[0], expected[0.0][0]) <= FP32_TOL
    assert relative_error(mixed[1], expected[0.7][1]) <= FP32_TOL
    assert run._cache_size() == 1


def test_bin_file_loads_same_params(tmp_path):
    """A `.bin` (torch.save of the nested dicts) gives the same params as `.safetensors`."""
    ref, module, params = _reference("2d", tmp_path)
    state = random_adapter(ref)
    save_file(state, tmp_path / "ip.safetensors")
    nested = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, name = key.split(".", 1)
        nested[group][name] = torch.from_numpy(value)
    torch.save(nested, tmp_path / "ip.bin")
    _, ip_params = load_ip_adapter(tmp_path / "ip.safetensors", module, params)
    _, bin_params = load_ip_adapter(tmp_path / "ip.bin", module, params)
    jax.tree.map(np.testing.assert_array_equal, ip_params, bin_params)


def test_mismatched_file_is_named(tmp_path):
    ref, module, params = _reference("2d", tmp_path)
    state = random_adapter(ref)
    del state["ip_adapter.21.to_v_ip.weight"]  # the mid block's second layer
    state["ip_adapter.3.to_k_ip.weight"] = state["ip_adapter.3.to_k_ip.weight"][:, :-1]
    state["ip_adapter.23.to_k_ip.weight"] = state["ip_adapter.1.to_k_ip.weight"]
    save_file(state, tmp_path / "ip.safetensors")
    with pytest.raises(WeightMismatchError) as info:
        load_ip_adapter(tmp_path / "ip.safetensors", module, params)
    message = str(info.value)
    assert "mid_block/attentions_0/transformer_blocks_1/attn2/processor/to_v_ip_0" in message
    assert "(from ip_adapter.21.to_v_ip.weight)" in message
    assert "ip_adapter.23.to_k_ip.weight" in info.value.unexpected
    assert [m[0].split(" ")[0] for m in info.value.misshaped] == [
        "down_blocks_1/attentions_0/transformer_blocks_0/attn2/processor/to_k_ip_0/kernel"
    ]


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "ip.safetensors"
    save_file(random_adapter(diffusers.UNet2DConditionModel(**UNET_2D)), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointFileError, match=r"ip\.safetensors"):
        load_ip_adapter(path, UNet2DConditionModel.from_config(UNET_2D), {})
