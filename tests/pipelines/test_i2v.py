"""The image-to-video pipeline on a tiny random AnimateDiff pipeline with an appearance encoder
and a ControlNet: with every conditioning off it is the text-to-video pipeline exactly; each
conditioning changes the video; scales are traced (no recompile); the noise priors follow their
formulas; bad input is named."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.models.appearance import appearance_encoder, spatial_params  # noqa: E402
from mv2_jax.pipelines.i2v import ImageToVideoPipeline  # noqa: E402
from mv2_jax.weights.controlnet import controlnet_from_unet  # noqa: E402
from tests.pipelines.tiny import tiny_animatediff_pipeline  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CALL = dict(num_inference_steps=2, num_frames=3, height=16, width=16, scheduler="ddim")
OFF = dict(reference_scale=None, controlnet_scale=None, ip_adapter_scale=None, noise_prior="none")
# every conditioning in the program, each at zero weight
ZERO = dict(reference_scale=0.0, controlnet_scale=0.0, noise_prior="mean_shift",
            noise_prior_strength=0.0)  # fmt: skip


def _perturbed(params, seed):
    """Params plus small noise: zero-initialised projections (ControlNet zero convs) start to
    act, so a conditioning's effect is visible with random weights."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2v") / "pipe"
    tiny_animatediff_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def t2v(folder):
    return mv2_jax.load_pipeline(folder)


def _i2v(t2v, controlnet) -> ImageToVideoPipeline:
    base = {f.name: getattr(t2v, f.name) for f in dataclasses.fields(t2v) if f.init}
    base.update(trace_count=0)
    return ImageToVideoPipeline(
        **base,
        appearance=(appearance_encoder(t2v.unet), _perturbed(spatial_params(t2v.unet_params), 1)),
        controlnet=None if controlnet is None else (controlnet[0], _perturbed(controlnet[1], 2)),
    )


@pytest.fixture(scope="module")
def pipe(t2v):
    sparse = controlnet_from_unet(
        t2v.unet, t2v.unet_params, sparse=True, conditioning_channels=4,
        use_simplified_condition_embedding=True, motion_num_attention_heads=2,
    )  # fmt: skip
    return _i2v(t2v, sparse)


def _image(seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (24, 20, 3)).astype(np.float32)


def _latents(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, 8, 8, 4), np.float32)


def test_every_conditioning_off_is_text_to_video(t2v, pipe):
    latents = _latents()
    expected = t2v("a cat", latents=latents, guidance_scale=3.0, **CALL)
    out = pipe(_image(), "a cat", latents=latents, guidance_scale=3.0, **CALL, **OFF)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_each_conditioning_acts_and_its_scale_is_traced(pipe):
    latents = _latents(1)
    off = pipe(_image(), "a cat", latents=latents, **CALL, **OFF)
    zero = pipe(_image(), "a cat", latents=latents, **CALL, **ZERO)
    np.testing.assert_allclose(zero, off, atol=1e-5)  # zero weight is off
    traces = pipe.trace_count
    for name in ("reference_scale", "controlnet_scale", "noise_prior_strength"):
        out = pipe(_image(), "a cat", latents=latents, **CALL, **{**ZERO, name: 0.5})
        assert np.isfinite(out).all(), name
        assert np.abs(out - off).max() > 1e-3, name
    everything = dict(reference_scale=1.0, controlnet_scale=1.0, noise_prior_strength=0.2)
    first = pipe(_image(), "a cat", latents=latents, **CALL, **{**ZERO, **everything})
    other = pipe(_image(3), "a dog", latents=latents, **CALL, **{**ZERO, **everything})
    assert pipe.trace_count == traces  # new scales, image and prompt: no recompile
    assert np.abs(first - other).max() > 1e-3


def test_controlnet_sees_the_image_on_the_first_or_every_frame(pipe):
    request, _ = _request(pipe, controlnet_frames="first")
    latent = jnp.ones((1, 8, 8, 4))
    image = jnp.ones((1, 16, 16, 3))
    cond, mask = pipe._control_condition(request, latent, image)  # SparseCtrl RGB: the latent
    assert cond.shape == (1, 3, 8, 8, 4)
    np.testing.assert_array_equal(mask, [[1, 0, 0]])
    np.testing.assert_array_equal(cond[:, 1:], 0)
    np.testing.assert_array_equal(cond[:, 0], latent)
    request = dataclasses.replace(request, controlnet_frames="all")
    cond, mask = pipe._control_condition(request, latent, image)
    np.testing.assert_array_equal(mask, [[1, 1, 1]])
    np.testing.assert_array_equal(cond, jnp.broadcast_to(latent[:, None], cond.shape))


def _request(pipe, **fields):
    """The program and traced scalars of a 3-frame 16² call (what the traced hooks read)."""
    prepared = pipe.prepare(pipe.request(
        _image(), "a cat", num_inference_steps=4, guidance_scale=1.0, scheduler="ddim",
        height=16, width=16, num_frames=3, decode_chunk_size=4,
    ))  # fmt: skip
    return dataclasses.replace(prepared.program, **fields), dict(prepared.scalars)


def test_noise_priors_follow_their_formulas(pipe):
    request, scalars = _request(pipe)
    noise = jnp.asarray(_latents(2))
    reference = jnp.asarray(np.random.default_rng(3).standard_normal((1, 8, 8, 4), np.float32))
    scalars["noise_prior_strength"] = jnp.float32(0.3)
    mean_shift = dataclasses.replace(request, noise_prior="mean_shift")
    got = pipe._noise_prior(mean_shift, noise, reference, scalars)
    want = np.sqrt(0.3) * reference[:, None] + np.sqrt(0.7) * noise
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the frequency prior keeps the reference's mean (the lowest frequency) up to noise
    scalars["noise_prior_strength"] = jnp.float32(1.0)
    frequency = dataclasses.replace(request, noise_prior="frequency")
    got = pipe._noise_prior(frequency, noise, reference, scalars)
    assert got.shape == noise.shape and np.isfinite(got).all()


def test_image_controlnet_runs_per_frame(t2v):
    """An SD ControlNet sees the key image frame by frame; frames without it get no residual."""
    # its condition embedding downsamples 2× (one stride-2 step), as this tiny VAE does
    controlnet = controlnet_from_unet(
        t2v.unet, t2v.unet_params, conditioning_embedding_out_channels=(8, 16)
    )
    pipe = _i2v(t2v, controlnet)
    request, _ = _request(pipe, controlnet_frames="first")
    image = jnp.asarray(_image()[None, :16, :16])
    cond, mask = pipe._control_condition(request, None, image)
    inputs = {"context": jnp.ones((1, 7, 32)), "control_cond": cond, "control_mask": mask}
    inputs["controlnet_scale"] = jnp.float32(1.0)
    x = jnp.asarray(_latents(4))
    residuals = pipe._control_residuals(pipe.controlnet[1], inputs, x, jnp.array([500.0]))
    for r in (
        *residuals["down_block_additional_residuals"],
        residuals["mid_block_additional_residual"],
    ):
        per_frame = np.abs(np.asarray(r)).reshape(3, -1).max(axis=1)  # [B·F, ...], B = 1
        assert per_frame[0] > 0 and (per_frame[1:] == 0).all()


def test_ip_adapter_on_the_key_image(folder, t2v, tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import save_file

    from mv2_jax.weights.ip_adapter import load_ip_adapter
    from tests.models.test_ip_adapter import random_adapter

    reference_unet = diffusers.UNetMotionModel.from_pretrained(folder / "unet")
    save_file(random_adapter(reference_unet, cross=32, image_dim=12), tmp_path / "ip.safetensors")
    unet, params = load_ip_adapter(tmp_path / "ip.safetensors", t2v.unet, t2v.unet_params)
    config = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8, projection_dim=12,
    )  # fmt: skip
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "encoder")
    pipe = dataclasses.replace(
        _i2v(t2v, None), unet=unet, unet_params=params, appearance=None,
        image_encoder=mv2_jax.load_component(tmp_path / "encoder"),
    )  # fmt: skip
    latents = _latents(5)
    off = t2v("a cat", latents=latents, **CALL)  # = the I2V pipeline with nothing on
    zero = pipe(_image(), "a cat", latents=latents, **CALL, **{**OFF, "ip_adapter_scale": 0.0})
    traces = pipe.trace_count
    on = pipe(_image(), "a cat", latents=latents, **CALL, **{**OFF, "ip_adapter_scale": 1.0})
    assert pipe.trace_count == traces
    np.testing.assert_allclose(zero, off, atol=1e-5)
    assert np.abs(on - off).max() > 1e-3


def test_bad_input_is_named(pipe):
    with pytest.raises(ValueError, match="noise_prior 'gauss'"):
        pipe(_image(), "a cat", noise_prior="gauss", **CALL)
    with pytest.raises(ValueError, match="controlnet_frames"):
        pipe(_image(), "a cat", controlnet_frames="last", **CALL)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        pipe(np.stack([_image(), _image()]), "a cat", **CALL)
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        pipe(np.zeros((4, 4)), "a cat", **CALL)


def test_loads_an_image_to_video_folder(folder, tmp_path):
    """This project's I2V folder: an AnimateDiff folder plus appearance_encoder/ (a spatial
    UNet2DConditionModel) and controlnet/ (SparseCtrl RGB), `_class_name` ImageToVideoPipeline."""
    import json
    import shutil

    from tests.weights.tiny_models import tiny_unet

    i2v_folder = tmp_path / "i2v"
    shutil.copytree(folder, i2v_folder)
    spatial = tiny_unet(seed=7)
    spatial.save_pretrained(i2v_folder / "appearance_encoder")
    sparse = diffusers.SparseControlNetModel(
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        cross_attention_dim=32, attention_head_dim=2, layers_per_block=1, norm_num_groups=8,
        conditioning_channels=4, use_simplified_condition_embedding=True,
        conditioning_embedding_out_channels=(8, 16), motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )  # fmt: skip
    sparse.save_pretrained(i2v_folder / "controlnet")
    index = json.loads((i2v_folder / "model_index.json").read_text())
    index.update(
        _class_name="ImageToVideoPipeline",
        appearance_encoder=["diffusers", "UNet2DConditionModel"],
        controlnet=["diffusers", "SparseControlNetModel"],
    )
    (i2v_folder / "model_index.json").write_text(json.dumps(index))

    pipe = mv2_jax.load_pipeline(i2v_folder)
    assert isinstance(pipe, ImageToVideoPipeline)
    assert type(pipe.appearance[0]).__name__ == "UNet2DConditionModel"
    assert type(pipe.controlnet[0]).__name__ == "SparseControlNetModel"
    video = pipe(_image(), "a cat", **CALL, noise_prior="frequency")
    assert video.shape == (1, 3, 16, 16, 3) and np.isfinite(video).all()


def test_frames_split_over_a_mesh_match_one_device(pipe):
    """Two videos × 4 frames on a data 2 × frames 4 mesh of the 8 simulated devices: every
    conditioning on, the same videos as without a mesh."""
    from mv2_jax.parallel import make_mesh

    call = dict(CALL, num_frames=4, noise_prior="frequency", seed=3)
    images = np.stack([_image(1), _image(2)])
    expected = pipe(images, ["a cat", "a dog"], **call)
    out = pipe(images, ["a cat", "a dog"], **call, mesh=make_mesh("data:2,frames:4"))
    np.testing.assert_allclose(out, expected, atol=1e-4)
