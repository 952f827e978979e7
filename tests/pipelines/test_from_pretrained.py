"""Loading shaped like diffusers: `Pipeline.from_pretrained(path, *, dtype, param_dtype,
variant, **components)` on a tiny random SD pipeline saved by diffusers, its precision variants
(single and sharded files, as `save_pretrained(variant=...)` names them), storage dtype apart
from compute dtype, replaced components, and the errors for ambiguous folders and hub ids."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.pipelines.t2i import TextToImagePipeline  # noqa: E402
from mv2_jax.pipelines.t2v import TextToVideoPipeline  # noqa: E402
from tests.weights.tiny_models import tiny_pipeline, tiny_vae  # noqa: E402

pytestmark = pytest.mark.torch

CALL = dict(num_inference_steps=2, height=16, width=16, seed=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    tiny_pipeline(folder)
    return folder


def _vae_with_variants(folder, tmp_path, *variants, plain=True, shard=False):
    """A copy of the pipeline whose vae/ holds the given variants (each of other weights)."""
    copy = tmp_path / "pipe"
    shutil.copytree(folder, copy)
    vae_folder = copy / "vae"
    if not plain:
        for file in vae_folder.glob("diffusion_pytorch_model*.safetensors"):
            file.unlink()
    for seed, variant in enumerate(variants, start=10):
        size = "2KB" if shard else "10GB"
        tiny_vae(seed).save_pretrained(vae_folder, variant=variant, max_shard_size=size)
    return copy


def _vae_params(pipe):
    return np.concatenate(
        [np.ravel(x).astype(np.float32) for x in jax.tree.leaves(pipe.vae_params)]
    )


def test_variant_picks_the_files_diffusers_names(folder, tmp_path):
    copy = _vae_with_variants(folder, tmp_path, "fp16")
    assert (copy / "vae" / "diffusion_pytorch_model.fp16.safetensors").exists()
    plain = TextToImagePipeline.from_pretrained(copy)
    fp16 = TextToImagePipeline.from_pretrained(copy, variant="fp16")
    expected = TextToImagePipeline.from_pretrained(folder)
    np.testing.assert_array_equal(_vae_params(plain), _vae_params(expected))  # un-suffixed
    assert np.abs(_vae_params(fp16) - _vae_params(plain)).max() > 1e-3  # the other weights
    vae = tiny_vae(10)
    weight = vae.decoder.conv_out.weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(fp16.vae_params["decoder"]["conv_out"]["kernel"], weight)


def test_sharded_variant_and_the_ambiguity_error(folder, tmp_path):
    copy = _vae_with_variants(folder, tmp_path, "fp16", plain=False, shard=True)
    index = copy / "vae" / "diffusion_pytorch_model.safetensors.index.fp16.json"
    index = (
        index
        if index.exists()
        else copy / "vae/diffusion_pytorch_model.fp16.safetensors.index.json"
    )
    assert index.exists(), sorted(p.name for p in (copy / "vae").iterdir())
    only = TextToImagePipeline.from_pretrained(copy)  # the one variant there is
    sharded = TextToImagePipeline.from_pretrained(copy, variant="fp16")
    np.testing.assert_array_equal(_vae_params(only), _vae_params(sharded))
    tiny_vae(11).save_pretrained(copy / "vae", variant="bf16")
    with pytest.raises(FileNotFoundError, match=r"several variants \(bf16, fp16\).*variant="):
        TextToImagePipeline.from_pretrained(copy)
    with pytest.raises(FileNotFoundError, match=r"variant=.fp8.*variants here: \[.bf16., .fp16.\]"):
        TextToImagePipeline.from_pretrained(copy, variant="fp8")
    assert np.isfinite(TextToImagePipeline.from_pretrained(copy, variant="bf16")("a", **CALL)).all()


def test_float32_params_with_bfloat16_compute(folder):
    full = TextToImagePipeline.from_pretrained(folder)
    mixed = mv2_jax.load_pipeline(folder, dtype="bf16", param_dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(mixed.unet_params)} == {jnp.dtype("float32")}
    assert mixed.unet.dtype == jnp.bfloat16 and mixed.vae.param_dtype == jnp.float32
    for ours, theirs in zip(jax.tree.leaves(mixed.unet_params), jax.tree.leaves(full.unet_params)):
        np.testing.assert_array_equal(ours, theirs)  # the stored weights are the fp32 ones
    a, b = full("a cat", **CALL), mixed("a cat", **CALL)
    assert b.dtype == jnp.bfloat16  # computed in bf16: 8 bits of mantissa per operation, and
    # random weights amplify rounding (measured: mean 0.021, max 0.18 of [0, 1] pixels)
    assert 0 < np.abs(a - b.astype(np.float32)).mean() < 0.05
    stored = TextToImagePipeline.from_pretrained(folder, param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(stored.unet_params)} == {jnp.dtype("bfloat16")}
    assert stored.unet.dtype == jnp.float32


def test_components_replace_the_folders_own(folder, tmp_path):
    base = TextToImagePipeline.from_pretrained(folder)
    other = tmp_path / "vae"
    tiny_vae(12).save_pretrained(other)
    given = TextToImagePipeline.from_pretrained(folder, unet=(base.unet, base.unet_params))
    assert given.unet_params is base.unet_params
    by_path = TextToImagePipeline.from_pretrained(folder, vae=other)
    assert np.abs(_vae_params(by_path) - _vae_params(base)).max() > 1e-3
    config = dict(base.scheduler_config, steps_offset=0)
    assert TextToImagePipeline.from_pretrained(folder, scheduler=config).scheduler_config == config
    with pytest.raises(TypeError, match="no component named controlnet"):
        TextToImagePipeline.from_pretrained(folder, controlnet=other)
    with pytest.raises(NotImplementedError, match="TextToVideoPipeline reads AnimateDiffPipeline"):
        TextToVideoPipeline.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="Hub ids are not accepted"):
        TextToImagePipeline.from_pretrained("runwayml/stable-diffusion-v1-5")
