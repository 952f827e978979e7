"""Reference attention (the appearance encoder) against diffusers UNets whose spatial `attn1`
processors do the same in PyTorch: record the reference pass's `attn1` inputs, then attend to
[own tokens; reference tokens] with log(scale) added to the reference keys' scores."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.models.appearance import (  # noqa: E402
    appearance_encoder,
    encode_reference,
    spatial_params,
    tile_reference,
    with_reference_scale,
)
from tests.reference import randomize_, relative_error  # noqa: E402
from tests.weights.tiny_models import MOTION_UNET  # noqa: E402

pytestmark = pytest.mark.torch

SPATIAL = dict(
    block_out_channels=(16, 32),
    norm_num_groups=8,
    cross_attention_dim=24,
    layers_per_block=1,
)
UNET_2D = dict(
    **SPATIAL,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(2, 1),
)
UNET_MOTION = MOTION_UNET  # the same spatial sizes as SPATIAL


class ReferenceProcessor:
    """A diffusers attention processor: in "write" mode records its input under its name, in
    "read" mode attends to [input; recorded input] with `log_scale` on the recorded keys."""

    def __init__(self, name, store, state):
        self.name, self.store, self.state = name, store, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        assert encoder_hidden_states is None and attention_mask is None
        kv, bias = hidden_states, None
        if self.state["mode"] == "write":
            self.store[self.name] = hidden_states
        else:
            ref = self.store[self.name]
            ref = ref.repeat_interleave(hidden_states.shape[0] // ref.shape[0], dim=0)
            kv = torch.cat([hidden_states, ref], dim=1)
            bias = torch.zeros(1, kv.shape[1])
            bias[:, hidden_states.shape[1] :] = self.state["log_scale"]
        split = lambda x: x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(kv)), split(attn.to_v(kv))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))


def _install(*models):
    store, state = {}, {"mode": "write", "log_scale": 0.0}
    for model in models:
        model.set_attn_processor(
            {
                name: ReferenceProcessor(name, store, state)
                if ".attentions." in name and name.endswith("attn1.processor")
                else processor
                for name, processor in model.attn_processors.items()
            }
        )
    return state


def _torch(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _to_nchw(x):
    return _torch(np.moveaxis(x, -1, -4 if x.ndim == 5 else 1))


@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_reference_attention_in_the_2d_unet(tmp_path, scale):
    torch.manual_seed(0)
    model = randomize_(diffusers.UNet2DConditionModel(**UNET_2D, sample_size=8))
    model.save_pretrained(tmp_path)
    unet, params = mv2_jax.load_component(tmp_path)
    rng = np.random.default_rng(0)
    ref, x = rng.standard_normal((2, 2, 8, 8, 4), np.float32)
    context = rng.standard_normal((2, 5, 24), np.float32)
    t = np.array([10.0, 700.0], np.float32)

    state = _install(model)
    with torch.no_grad():
        model(_to_nchw(ref), 0, _torch(context))
        state.update(mode="read", log_scale=float(np.log(scale)))
        expected = model(_to_nchw(x), _torch(t), _torch(context)).sample.numpy()

    reference = encode_reference(appearance_encoder(unet), params, ref, context)
    reference = with_reference_scale(reference, scale)
    out = unet.apply({"params": params, "reference": reference}, x, t, context)
    assert relative_error(out, np.moveaxis(expected, 1, -1)) <= 1e-5


def test_reference_attention_in_the_motion_unet(tmp_path):
    """Two videos × 3 frames, CFG-style doubled batch: each video's frames see its own
    reference; the encoder is the spatial UNet (motion modules skipped), as a 2D UNet runs it."""
    torch.manual_seed(0)
    model = randomize_(diffusers.UNetMotionModel(**UNET_MOTION))
    model.save_pretrained(tmp_path)
    spatial = diffusers.UNet2DConditionModel(
        **SPATIAL,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
    )
    state_dict = {k: v for k, v in model.state_dict().items() if "motion_modules" not in k}
    spatial.load_state_dict(state_dict, strict=True)
    unet, params = mv2_jax.load_component(tmp_path)

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2, 8, 8, 4), np.float32)
    x = rng.standard_normal((4, 3, 8, 8, 4), np.float32)
    context = rng.standard_normal((2, 5, 24), np.float32)
    t = np.array([10.0, 700.0, 10.0, 700.0], np.float32)

    state = _install(model, spatial)
    with torch.no_grad():
        spatial(_to_nchw(np.concatenate([ref, ref])), 0, _torch(np.concatenate([context] * 2)))
        state.update(mode="read")
        # diffusers' motion UNet takes the text once per frame
        per_frame = np.concatenate([context] * 2).repeat(3, axis=0)
        expected = model(_to_nchw(x), _torch(t), _torch(per_frame)).sample.numpy()

    encoder = appearance_encoder(unet)
    reference = encode_reference(encoder, spatial_params(params), ref, context)
    reference = tile_reference(with_reference_scale(reference, 1.0), 2)
    out = unet.apply(
        {"params": params, "reference": reference}, x, t, np.concatenate([context] * 2)
    )
    assert relative_error(out, np.moveaxis(expected, 1, -1)) <= 1e-5


def test_scale_zero_switches_reference_attention_off(tmp_path):
    model = randomize_(diffusers.UNet2DConditionModel(**UNET_2D, sample_size=8))
    model.save_pretrained(tmp_path)
    unet, params = mv2_jax.load_component(tmp_path)
    rng = np.random.default_rng(2)
    ref, x = rng.standard_normal((2, 1, 8, 8, 4), np.float32)
    context = rng.standard_normal((1, 5, 24), np.float32)
    reference = encode_reference(appearance_encoder(unet), params, ref, context)
    assert set(reference) == {"down_blocks_0", "mid_block", "up_blocks_1"}
    off = jax.jit(lambda r: unet.apply({"params": params, "reference": r}, x, 500.0, context))
    plain = unet.apply({"params": params}, x, 500.0, context)
    assert relative_error(off(with_reference_scale(reference, 0.0)), plain) <= 1e-5
    assert relative_error(off(with_reference_scale(reference, 1.0)), plain) > 1e-3


def test_bad_reference_shapes_are_named(tmp_path):
    model = randomize_(diffusers.UNet2DConditionModel(**UNET_2D, sample_size=8))
    model.save_pretrained(tmp_path)
    unet, params = mv2_jax.load_component(tmp_path)
    context = np.zeros((2, 5, 24), np.float32)
    with pytest.raises(ValueError, match=r"\[B,h,w,C\]"):
        encode_reference(unet, params, np.zeros((2, 1, 8, 8, 4), np.float32), context)
    reference = encode_reference(unet, params, np.zeros((2, 8, 8, 4), np.float32), context)
    x = np.zeros((3, 8, 8, 4), np.float32)
    with pytest.raises(ValueError, match="reference batch"):
        unet.apply({"params": params, "reference": reference}, x, 1.0, context[:1].repeat(3, 0))
