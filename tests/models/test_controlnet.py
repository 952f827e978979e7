"""ControlNetModel and SparseControlNetModel parity with diffusers (random weights, fp32): heads
per block, transformer_layers_per_block > 1, guess mode, global pooling, BGR order, SDXL
text-time; SparseCtrl with and without the simplified embedding and the concatenated mask,
conditions on some frames only; residuals fed into the UNet; initialisation from a UNet."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.models.controlnet import ControlNetModel, SparseControlNetModel  # noqa: E402
from mv2_jax.weights.controlnet import controlnet_from_unet  # noqa: E402
from tests.reference import randomize_, relative_error  # noqa: E402

pytestmark = pytest.mark.torch

BASE = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    norm_num_groups=8,
    cross_attention_dim=24,
)
# The SD1.5 layout at tiny width (a 2× rather than 8× condition embedding, for compile time).
SD15 = dict(attention_head_dim=2, layers_per_block=2, conditioning_embedding_out_channels=(8, 16))
# name → (config, call kwargs); SD15 is checked by test_controlnet_residuals_drive_the_unet
CONFIGS = {
    "heads_per_block_two_layers_bgr_guess_mode_sdxl_text_time_resnet_mid": (
        dict(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            num_attention_heads=(2, 4),
            transformer_layers_per_block=(1, 2),
            layers_per_block=1,
            mid_block_type="UNetMidBlock2D",
            conditioning_embedding_out_channels=(8, 8, 16),
            conditioning_channels=1,
            controlnet_conditioning_channel_order="bgr",
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=12 + 6 * 8,
        ),
        dict(conditioning_scale=1.3, guess_mode=True),
    ),
}

SPARSE_BASE = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    norm_num_groups=8,
    cross_attention_dim=24,
    attention_head_dim=2,
    motion_num_attention_heads=2,
    motion_max_seq_length=8,
)
# SparseCtrl RGB (the defaults: a latent-size condition of 4 channels + the mask, embedded by one
# zero conv); checked by test_sparse_controlnet_residuals_drive_the_motion_unet
SPARSE_RGB = dict(layers_per_block=1)
SPARSE_CONFIGS = {
    "scribble_heads_per_block_two_layers": dict(
        use_simplified_condition_embedding=False,
        concat_conditioning_mask=False,
        conditioning_channels=3,
        conditioning_embedding_out_channels=(8, 16),
        num_attention_heads=(2, 4),
        motion_num_attention_heads=(4, 2),
        transformer_layers_per_block=(2, 1),
        temporal_transformer_layers_per_block=(1, 2),
        layers_per_block=1,
    ),
    "pixel_condition_with_mask_two_mid_layers": dict(
        use_simplified_condition_embedding=False,
        conditioning_channels=3,
        conditioning_embedding_out_channels=(8, 16),
        layers_per_block=1,
        transformer_layers_per_mid_block=2,
        global_pool_conditions=True,
    ),
}


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _apply(module, params, *args, **kwargs):
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, **kwargs))(params, *args)


def _inputs(cfg: dict, seed: int = 0):
    """sample [2,8,8,4], timesteps, context, pixel-space condition, extra kwargs (numpy)."""
    rng = np.random.default_rng(seed)
    size = 8 * 2 ** (len(cfg["conditioning_embedding_out_channels"]) - 1)
    sample = rng.standard_normal((2, 8, 8, 4), np.float32)
    context = rng.standard_normal((2, 7, 24), np.float32)
    cond = rng.uniform(0, 1, (2, size, size, cfg.get("conditioning_channels", 3)))
    kwargs = {}
    if cfg.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": rng.standard_normal((2, 12), np.float32),
            "time_ids": np.array([[64, 64, 0, 0, 64, 64], [48, 64, 8, 4, 48, 64]], np.float32),
        }
    return sample, np.array([3.0, 741.0], np.float32), context, cond.astype(np.float32), kwargs


def _torch_controlnet(ref, sample, t, context, cond, scale, **kwargs):
    """diffusers' residuals, channels-last, and as it returns them (to feed its UNet)."""
    added = kwargs.pop("added_cond_kwargs", None)
    if added is not None:
        kwargs["added_cond_kwargs"] = {k: torch.from_numpy(v) for k, v in added.items()}
    with torch.no_grad():
        down, mid = ref(
            _nchw(sample),
            torch.from_numpy(t),
            torch.from_numpy(context),
            _nchw(cond),
            conditioning_scale=scale,
            return_dict=False,
            **kwargs,
        )
    last = [np.moveaxis(d.numpy(), 1, -1) for d in down], np.moveaxis(mid.numpy(), 1, -1)
    return last, (down, mid)


def _assert_close(actual, expected) -> float:
    """Every residual within 1e-4 relative error; returns the worst."""
    (down, mid), (down_ref, mid_ref) = actual, expected
    assert len(down) == len(down_ref)
    errors = [relative_error(a, e) for a, e in zip((*down, mid), (*down_ref, mid_ref))]
    assert max(errors) <= 1e-4, errors
    print(f"residuals: max relative error {max(errors):.2e}")
    return max(errors)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_controlnet_matches_diffusers(tmp_path, name):
    cfg, call = CONFIGS[name]
    cfg, call = {**BASE, **cfg}, dict(call)
    ref = randomize_(diffusers.ControlNetModel(**cfg))
    ref.save_pretrained(tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    assert isinstance(module, ControlNetModel)
    sample, t, context, cond, kwargs = _inputs(cfg)
    scale = call.pop("conditioning_scale")
    expected, _ = _torch_controlnet(ref, sample, t, context, cond, scale, **kwargs, **call)
    # conditioning_scale traced (a jit argument), so a new scale never recompiles
    actual = _apply(module, params, sample, t, context, cond, np.float32(scale), **kwargs, **call)
    _assert_close(actual, expected)


def test_controlnet_residuals_drive_the_unet(tmp_path):
    """SD1.5-layout ControlNet → UNet2DConditionModel in one jit, as diffusers' pipeline does."""
    cfg = {**BASE, **SD15}
    unet_cfg = dict(
        BASE,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
        layers_per_block=2,
    )
    models = {
        "controlnet": randomize_(diffusers.ControlNetModel(**cfg), seed=1),
        "unet": randomize_(diffusers.UNet2DConditionModel(**unet_cfg), seed=2),
    }
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    (net, net_params), (unet, unet_params) = (mv2_jax.load_component(tmp_path / n) for n in models)
    sample, t, context, cond, _ = _inputs(cfg)
    expected, (down, mid) = _torch_controlnet(models["controlnet"], sample, t, context, cond, 0.6)
    with torch.no_grad():
        expected_out = models["unet"](
            _nchw(sample), torch.from_numpy(t), torch.from_numpy(context),
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample.permute(0, 2, 3, 1)  # fmt: skip

    @jax.jit
    def controlled(net_params, unet_params, sample, t, context, cond, scale):
        down, mid = net.apply({"params": net_params}, sample, t, context, cond, scale)
        out = unet.apply({"params": unet_params}, sample, t, context, None, down, mid)
        return (down, mid), out

    residuals, out = controlled(net_params, unet_params, sample, t, context, cond, np.float32(0.6))
    _assert_close(residuals, expected)
    error = relative_error(out, expected_out.numpy())
    print(f"UNet output: relative error {error:.2e}")
    assert error <= 1e-4


def _sparse_inputs(cfg: dict, frames: int = 3, seed: int = 0):
    """Video, timesteps, context, condition and mask: only frames 0 and 2 are conditioned."""
    rng = np.random.default_rng(seed)
    simplified = cfg.get("use_simplified_condition_embedding", True)
    factor = 1 if simplified else 2 ** (len(cfg["conditioning_embedding_out_channels"]) - 1)
    size = 8 * factor
    sample = rng.standard_normal((2, frames, 8, 8, 4), np.float32)
    context = rng.standard_normal((2, 7, 24), np.float32)
    channels = cfg.get("conditioning_channels", 4)
    cond = rng.standard_normal((2, frames, size, size, channels)).astype(np.float32)
    mask = np.zeros((2, frames, size, size, 1), np.float32)
    mask[:, 0::2] = 1.0
    return sample, np.array([3.0, 741.0], np.float32), context, cond * mask, mask


def _video(x):  # [B,F,H,W,C] → diffusers' [B,C,F,H,W]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _torch_sparse(ref, sample, t, context, cond, mask, scale, **kwargs):
    """diffusers' residuals as `[B,F,h,w,c]`, and as it returns them, `[B·F,c,h,w]`; it takes
    `[B,C,F,H,W]` and a context per frame."""
    batch, frames = sample.shape[:2]
    with torch.no_grad():
        down, mid = ref(
            _video(sample),
            torch.from_numpy(t),
            torch.from_numpy(context).repeat_interleave(frames, 0),
            _video(cond),
            conditioning_scale=scale,
            conditioning_mask=_video(mask),
            return_dict=False,
            **kwargs,
        )

    def unfold(r):
        r = np.moveaxis(r.numpy(), 1, -1)
        return r.reshape(batch, frames, *r.shape[1:])

    return ([unfold(d) for d in down], unfold(mid)), (down, mid)


@pytest.mark.parametrize("name", list(SPARSE_CONFIGS))
def test_sparse_controlnet_matches_diffusers(tmp_path, name):
    cfg = {**SPARSE_BASE, **SPARSE_CONFIGS[name]}
    ref = randomize_(diffusers.SparseControlNetModel(**cfg))
    ref.save_pretrained(tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    assert isinstance(module, SparseControlNetModel)
    sample, t, context, cond, mask = _sparse_inputs(cfg)
    guess = name.startswith("scribble")
    expected, _ = _torch_sparse(ref, sample, t, context, cond, mask, 0.8, guess_mode=guess)
    actual = _apply(
        module, params, sample, t, context, cond, np.float32(0.8), mask, guess_mode=guess
    )
    _assert_close(actual, expected)


def test_sparse_controlnet_residuals_drive_the_motion_unet(tmp_path):
    """SparseCtrl RGB → UNetMotionModel in one jit; the residuals go in as `[B,F,h,w,c]`, and
    the mask as one flag per frame, `[B,F]`."""
    cfg = {**SPARSE_BASE, **SPARSE_RGB}
    unet_cfg = dict(
        SPARSE_BASE,
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        num_attention_heads=2,
        layers_per_block=1,
    )
    unet_cfg.pop("attention_head_dim")
    models = {
        "controlnet": randomize_(diffusers.SparseControlNetModel(**cfg), seed=1),
        "unet": randomize_(diffusers.UNetMotionModel(**unet_cfg), seed=2),
    }
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    (net, net_params), (unet, unet_params) = (mv2_jax.load_component(tmp_path / n) for n in models)
    sample, t, context, cond, mask = _sparse_inputs(cfg, frames=3)
    expected, (down, mid) = _torch_sparse(models["controlnet"], sample, t, context, cond, mask, 1.0)
    with torch.no_grad():
        expected_out = models["unet"](
            _video(sample),
            torch.from_numpy(t),
            torch.from_numpy(context).repeat_interleave(3, 0),
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample.permute(0, 2, 3, 4, 1)

    @jax.jit
    def controlled(net_params, unet_params, sample, t, context, cond, mask):
        down, mid = net.apply({"params": net_params}, sample, t, context, cond, 1.0, mask)
        out = unet.apply({"params": unet_params}, sample, t, context, None, down, mid)
        return (down, mid), out

    per_frame = mask[:, :, 0, 0, 0]
    residuals, out = controlled(net_params, unet_params, sample, t, context, cond, per_frame)
    _assert_close(residuals, expected)
    error = relative_error(out, expected_out.numpy())
    print(f"UNet output: relative error {error:.2e}")
    assert error <= 1e-4


def _assert_initialised_like(params, reference):
    """`params` equal `reference` (diffusers' from_unet, converted) on everything copied from
    the UNet and on the zero convs; elsewhere (fresh init: the condition embedding, SparseCtrl's
    motion modules) only the shapes agree."""
    from flax import traverse_util

    flat, flat_ref = (traverse_util.flatten_dict(p) for p in (params, reference))
    assert flat.keys() == flat_ref.keys()
    shared = ("conv_in", "time_embedding", "down_blocks_", "mid_block")
    for path, value in flat.items():
        assert value.shape == flat_ref[path].shape, path
        if path[0].startswith(shared) and not any("motion_modules" in p for p in path):
            np.testing.assert_array_equal(value, flat_ref[path], err_msg="/".join(path))
        zero_conv = path[0].startswith(("controlnet_down_blocks_", "controlnet_mid_block")) or (
            path[0] == "controlnet_cond_embedding" and path[1] in ("conv_out", "kernel", "bias")
        )
        if zero_conv:
            assert not np.any(value) and not np.any(flat_ref[path]), path


@pytest.mark.parametrize("sparse", [False, True])
def test_controlnet_from_unet_matches_diffusers(tmp_path, sparse):
    unet_cfg = dict(
        BASE,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],  # a list: SparseCtrl edits it
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(2, 1),
        layers_per_block=1,
    )
    ref_unet = randomize_(diffusers.UNet2DConditionModel(**unet_cfg))
    ref_unet.save_pretrained(tmp_path / "unet")
    unet, unet_params = mv2_jax.load_component(tmp_path / "unet")
    cls = diffusers.SparseControlNetModel if sparse else diffusers.ControlNetModel
    ref = cls.from_unet(ref_unet, conditioning_embedding_out_channels=(8, 16))
    ref.save_pretrained(tmp_path / "controlnet")
    _, ref_params = mv2_jax.load_component(tmp_path / "controlnet")

    module, params = controlnet_from_unet(
        unet, unet_params, jax.random.key(1, impl="rbg"), sparse=sparse,
        conditioning_embedding_out_channels=(8, 16),
    )  # fmt: skip
    expected = (SparseControlNetModel if sparse else ControlNetModel).from_config(dict(ref.config))
    assert module == expected
    _assert_initialised_like(params, ref_params)


def test_errors_name_the_problem():
    net = ControlNetModel.from_config({**BASE, **SD15})
    sample, t, context, cond, _ = _inputs(SD15)
    init = jax.random.key(0)
    with pytest.raises(ValueError, match=r"expected shape \(2, 16, 16, 3\)"):
        jax.eval_shape(net.init, init, sample, t, context, cond[:, :8, :8])
    with pytest.raises(NotImplementedError, match="encoder_hid_dim"):
        jax.eval_shape(net.clone(encoder_hid_dim=24).init, init, sample, t, context, cond)
    sparse = SparseControlNetModel.from_config(SPARSE_BASE)
    sample, t, context, cond, mask = _sparse_inputs(SPARSE_BASE)
    with pytest.raises(ValueError, match="pass conditioning_mask of shape"):
        jax.eval_shape(sparse.init, init, sample, t, context, cond)
    with pytest.raises(ValueError, match=r"expected \[B,L,D\] with B=2"):
        context_per_frame = np.repeat(context, 3, axis=0)  # diffusers' layout is not taken
        jax.eval_shape(sparse.init, init, sample, t, context_per_frame, cond, 1.0, mask)
    with pytest.raises(ValueError, match=r"videos \[B,F,h,w,C\]"):
        jax.eval_shape(sparse.init, init, sample[:, 0], t, context, cond, 1.0, mask)
    bad = sparse.clone(down_block_types=BASE["down_block_types"])
    with pytest.raises(NotImplementedError, match="down block type"):
        jax.eval_shape(bad.init, init, sample, t, context, cond, 1.0, mask)
