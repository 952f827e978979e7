"""FrameInterpolator and PatchDiscriminator: shapes, t-dependence, the zero-initialised heads,
a RIFE-layout IFBlock against a PyTorch reference, the component folder round trip, the
shipped weights on unseen pans, and clear errors."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mv2_jax
from mv2_jax.models.discriminator import PatchDiscriminator
from mv2_jax.models.vfi import FrameInterpolator, IFBlock, global_shift
from mv2_jax.weights.torch_layout import torch_state_dict
from mv2_jax.weights.vfi import write_vfi_folder

SMALL = dict(block_channels=(16, 8), block_scales=(2, 1), num_res=1, refine_channels=8)
SHIPPED = Path(mv2_jax.__file__).parent / "assets" / "vfi"


# numpy draws and rbg init keys: XLA:CPU compiles a threefry program per shape slowly.
def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _frames(shape=(2, 16, 24, 3), seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.random(shape, np.float32)), jnp.asarray(rng.random(shape, np.float32))


def _randomised(params, scale=0.3, seed=1):
    """Every param redrawn (normal · scale): the zero-initialised heads then act."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(scale * rng.standard_normal(x.shape, np.float32)), params
    )


@functools.partial(jax.jit, static_argnums=(0, 5))
def _jitted(model, params, frame0, frame1, t, return_aux):
    return model.apply({"params": params}, frame0, frame1, t, return_aux=return_aux)


def _run(model, params, frame0, frame1, t, return_aux=False):
    """`model.apply`, jitted once per model and shapes (t given as `[B]`, as the model
    broadcasts a scalar): eager dispatch would compile every small op on its own."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), frame0.shape[:1])
    return _jitted(model, params, frame0, frame1, t, return_aux)


@pytest.fixture(scope="module")
def small():
    model = FrameInterpolator(**SMALL)
    frame0, frame1 = _frames()
    params = jax.jit(model.init)(_key(0), frame0, frame1, jnp.full((2,), 0.5))["params"]
    return model, params


def test_shapes_range_and_t_dependence(small):
    model, params = small
    params = _randomised(params)
    frame0, frame1 = _frames()
    early, aux = _run(model, params, frame0, frame1, jnp.array([0.25, 0.25]), True)
    late = _run(model, params, frame0, frame1, 0.75)
    assert early.shape == (2, 16, 24, 3) and early.dtype == jnp.float32
    assert float(early.min()) >= 0 and float(early.max()) <= 1
    assert aux["flow"].shape == (2, 16, 24, 4) and aux["mask"].shape == (2, 16, 24, 1)
    assert len(aux["merged"]) == 2
    assert float(jnp.abs(early - late).mean()) > 1e-3
    assert float(jnp.abs(aux["flow"]).max()) > 1e-2  # the flows are not the zero of a new model


def test_new_model_blends_and_returns_identical_frames(small):
    """Zero-initialised heads: zero flow, mask 0.5, no refinement — the linear blend, so two
    identical frames come back unchanged."""
    model, params = small
    frame0, frame1 = _frames()
    out = _run(model, params, frame0, frame1, jnp.array([0.2, 0.9]))
    np.testing.assert_allclose(out, 0.5 * (frame0 + frame1), atol=1e-6)
    same = _run(model, params, frame0, frame0, jnp.array([0.3, 0.6]))
    np.testing.assert_allclose(same, frame0, atol=1e-6)


@pytest.mark.torch
def test_ifblock_matches_a_pytorch_rife_block():
    """An IFBlock computes what RIFE v4's does from the same weights (written in the PyTorch
    layout our component folders use): convs, ResConv beta, transposed conv + pixel shuffle,
    bilinear resizes and the flow rescaling."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    block = IFBlock(channels=8, num_res=2)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.random((1, 16, 16, 7), np.float32))
    flow = jnp.asarray(3 * rng.standard_normal((1, 16, 16, 4), np.float32))
    shapes = jax.eval_shape(lambda: block.init(_key(0), x, flow, 2)["params"])
    params = _randomised(shapes, scale=0.2)
    flow_out, mask_out = jax.jit(lambda p: block.apply({"params": p}, x, flow, 2))(params)

    w = {k: torch.from_numpy(v.copy()) for k, v in torch_state_dict(params).items()}
    lrelu = lambda v: F.leaky_relu(v, 0.2)  # noqa: E731
    resize = lambda v, f: F.interpolate(v, scale_factor=f, mode="bilinear", align_corners=False)  # noqa: E731
    tx, tflow = (torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2) for a in (x, flow))
    feat = torch.cat([resize(tx, 0.5), resize(tflow, 0.5) / 2], 1)
    feat = lrelu(F.conv2d(feat, w["conv0.0.0.weight"], w["conv0.0.0.bias"], 2, 1))
    feat = lrelu(F.conv2d(feat, w["conv0.1.0.weight"], w["conv0.1.0.bias"], 2, 1))
    for j in range(2):
        conv = F.conv2d(feat, w[f"convblock.{j}.conv.weight"], w[f"convblock.{j}.conv.bias"], 1, 1)
        feat = lrelu(conv * w[f"convblock.{j}.beta"].view(1, -1, 1, 1) + feat)
    tmp = F.conv_transpose2d(feat, w["lastconv.0.weight"], w["lastconv.0.bias"], 2, 1)
    tmp = resize(F.pixel_shuffle(tmp, 2), 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(flow_out, tmp[..., :4] * 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mask_out, tmp[..., 4:5], rtol=1e-4, atol=1e-5)


def test_component_folder_round_trip(small, tmp_path):
    model, params = small
    params = _randomised(params)
    folder = write_vfi_folder(tmp_path / "vfi", model, params)
    loaded, loaded_params = mv2_jax.load_component(folder)
    assert isinstance(loaded, FrameInterpolator) and loaded.block_scales == SMALL["block_scales"]
    jax.tree.map(np.testing.assert_array_equal, loaded_params, params)
    frame0, frame1 = _frames()
    np.testing.assert_array_equal(
        _run(loaded, loaded_params, frame0, frame1, 0.4),
        _run(model, params, frame0, frame1, 0.4),
    )
    state = torch_state_dict(params)  # RIFE names, PyTorch layouts
    assert state["block0.conv0.0.0.weight"].shape == (8, 7, 3, 3)
    assert state["block1.conv0.0.0.weight"].shape == (4, 12, 3, 3)
    assert state["block1.lastconv.0.weight"].shape == (8, 20, 4, 4)
    assert state["block0.convblock.0.beta"].shape == (16,)


def test_global_motion_starts_from_the_pan(small):
    """Phase correlation finds a sub-pixel pan; a new model with `global_motion` then warps by
    it, so on a pure pan it is near the truth before any training (the blend is not)."""
    photo = np.random.default_rng(5).random((96, 96, 3), np.float32)  # white noise: textured
    from scipy import ndimage

    photo = jnp.asarray(ndimage.gaussian_filter(photo, (1.0, 1.0, 0)))
    frame0, frame1 = photo[None, 16:48, 16:48], photo[None, 13:45, 22:54]  # content moves (-6, 3)
    np.testing.assert_allclose(global_shift(frame0, frame1)[0], [-6, 3], atol=0.1)
    model = FrameInterpolator(**SMALL, global_motion=True)  # the same params as without
    params = small[1]
    middle = _run(model, params, frame0, frame1, 1 / 3)
    truth = photo[None, 15:47, 18:50]
    inner = (slice(None), slice(4, -4), slice(4, -4))
    blend = (2 / 3) * frame0 + (1 / 3) * frame1
    model_error = float(jnp.abs(middle - truth)[inner].mean())
    blend_error = float(jnp.abs(blend - truth)[inner].mean())
    assert model_error < 0.003 and blend_error > 0.05, (model_error, blend_error)


def test_bad_inputs_raise_clear_errors(small):
    model, params = small
    frame0, frame1 = _frames((1, 20, 24, 3))
    with pytest.raises(ValueError, match=r"multiples of 8; got 20×24.*24×24"):
        model.apply({"params": params}, frame0, frame1, 0.5)
    frame0, frame1 = _frames()
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        model.apply({"params": params}, frame0, frame1[..., :2], 0.5)
    with pytest.raises(ValueError, match="one entry per block"):
        FrameInterpolator(block_channels=(8,), block_scales=(2, 1)).init(
            _key(0), frame0, frame1, 0.5
        )


def test_patch_discriminator_gives_a_logit_per_patch():
    disc = PatchDiscriminator(channels=(8, 16))
    images = _frames((2, 16, 24, 9))[0]
    params = jax.jit(disc.init)(_key(1), images)["params"]
    logits = jax.jit(disc.apply)({"params": params}, images)
    assert logits.shape == (2, 4, 6, 1) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="multiples of 4"):
        disc.apply({"params": params}, images[:, :14])


@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="no shipped VFI weights")
def test_shipped_weights_follow_an_unseen_pan():
    """The packaged model on a held-out photograph: a still frame comes back, and the middle
    of a 6-pixel horizontal pan is the 3-pixel shift, far closer than the linear blend."""
    pytest.importorskip("skimage")
    from mv2_jax.data.motion_clips import load_photo

    def psnr(x, y):
        return -10 * np.log10(np.mean(np.square(np.asarray(x) - np.asarray(y))))

    model, params = mv2_jax.load_component(SHIPPED)
    photo = jnp.asarray(load_photo("motorcycle"))
    crop = lambda x: photo[None, 150:214, 300 + x : 396 + x]  # noqa: E731
    still = _run(model, params, crop(0), crop(0), 0.5)
    assert float(psnr(still, crop(0))) > 38
    middle = _run(model, params, crop(0), crop(6), 0.5)
    inner = lambda x: x[:, :, 8:-8]  # noqa: E731  (content enters and leaves at the sides)
    blend_psnr = float(psnr(inner(0.5 * (crop(0) + crop(6))), inner(crop(3))))
    model_psnr = float(psnr(inner(middle), inner(crop(3))))
    assert model_psnr > blend_psnr + 6, (model_psnr, blend_psnr)
