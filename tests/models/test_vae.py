"""Flax `AutoencoderKL` against diffusers' with random weights: encode / decode parity in fp32,
legacy checkpoints, bf16, tiled and frame-chunked decoding, and errors on bad checkpoints."""

import json
import shutil
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.torch import load_file, save_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from mv2_jax.weights.safetensors_io import CheckpointFileError  # noqa: E402
from tests.reference import nchw_to_nhwc, nhwc_to_nchw, randomize_, relative_error  # noqa: E402

TOL = 1e-4
WEIGHTS = "diffusion_pytorch_model.safetensors"

# Tiny configs covering the options: block counts and (non-monotone) channels, layers per block,
# latent channels, quant convs on / off / mixed, mid-block attention on / off, norm groups, and
# an act_fn other than SiLU (diffusers keeps SiLU before conv_out whatever act_fn says).
CONFIGS = {
    "two_blocks": dict(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4),
    "three_blocks_bare": dict(
        block_out_channels=(16, 8, 24),
        layers_per_block=2,
        latent_channels=3,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    ),
    "one_block_gelu": dict(
        block_out_channels=(12,),
        layers_per_block=3,
        latent_channels=2,
        norm_num_groups=6,
        act_fn="gelu",
        use_quant_conv=False,
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    # Next to XLA's thread pool torch's own one spins: on 2 cores a tiled torch decode of these
    # tiny models took 3 s with 2 threads and 0.05 s with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_vae(config: dict, seed: int = 0):
    n = len(config["block_out_channels"])
    full = dict(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=32,
        **config,
    )
    return randomize_(diffusers.AutoencoderKL(**full), seed=seed)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def vae_pair(request, tmp_path_factory):
    """(torch model, flax module, params, folder) for one config."""
    model = _torch_vae(CONFIGS[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    module, params = mv2_jax.load_component(folder)
    return model, module, params, folder


def _image(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_posterior(model, x_nhwc):
    with torch.no_grad():
        return model.encode(torch.from_numpy(nhwc_to_nchw(x_nhwc))).latent_dist


def _torch_decode(model, z_nhwc) -> np.ndarray:
    with torch.no_grad():
        return nchw_to_nhwc(model.decode(torch.from_numpy(nhwc_to_nchw(z_nhwc))).sample.numpy())


def test_matches_diffusers(vae_pair):
    model, module, params, _ = vae_pair
    x = _image((2, 24, 16, 3))
    rng = jax.random.key(3, impl="rbg")  # threefry's normal alone compiles for seconds on CPU

    @jax.jit  # one compilation for both calls (op-by-op dispatch compiles far more)
    def run(v, x):
        return module.apply(v, x, method="encode"), module.apply(v, x, rng, sample_posterior=True)

    post, decoded = run({"params": params}, x)
    ref = _torch_posterior(model, x)
    for name in ("mean", "logvar", "std"):
        expected = nchw_to_nhwc(getattr(ref, name).numpy())
        assert relative_error(getattr(post, name), expected) <= TOL, name
    assert relative_error(post.kl(), ref.kl().numpy()) <= TOL
    # sample(rng) is mean + std · ε with ε drawn from the key: check with the same ε.
    eps = torch.from_numpy(nhwc_to_nchw(np.array(jax.random.normal(rng, post.mean.shape))))
    sample = nchw_to_nhwc((ref.mean + ref.std * eps).numpy())
    assert relative_error(post.sample(rng), sample) <= TOL
    assert relative_error(decoded, _torch_decode(model, sample)) <= TOL


def _rewrite_checkpoint(folder, dest, rename) -> int:
    """Copy a component folder, passing every (key, tensor) of its weights through `rename`;
    returns how many tensors changed name or shape."""
    shutil.copytree(folder, dest)
    state = load_file(dest / WEIGHTS)
    renamed = dict(rename(k, t) for k, t in state.items())
    save_file(renamed, dest / WEIGHTS)
    return sum(k not in state or state[k].shape != t.shape for k, t in renamed.items())


_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _legacy_names(key, tensor):
    for new, old in _LEGACY.items():
        if ".attentions." in key and f".{new}." in key:
            return key.replace(f".{new}.", f".{old}."), tensor
    return key, tensor


def _conv_attention(key, tensor):
    # LDM-converted VAEs store the attention projections as 1×1 convs [C, C, 1, 1].
    if ".attentions." in key and key.endswith("weight") and tensor.ndim == 2:
        return key, tensor[:, :, None, None].contiguous()
    return key, tensor


# Two mid-block attentions (encoder, decoder): 4 projections × (weight, bias) renamed each, or
# their 4 weights reshaped. The params must equal those of the current-format folder, whose
# numbers `test_matches_diffusers` checks (a transposed square kernel would fit but differ).
@pytest.mark.parametrize("vae_pair", ["two_blocks"], indirect=True)
@pytest.mark.parametrize(
    "rename, changed", [(_legacy_names, 16), (_conv_attention, 8)], ids=["names", "conv1x1"]
)
def test_legacy_attention_checkpoints(vae_pair, rename, changed, tmp_path):
    _, _, params, folder = vae_pair
    assert _rewrite_checkpoint(folder, tmp_path / "old", rename) == changed
    _, legacy = mv2_jax.load_component(tmp_path / "old")
    assert jax.tree.structure(legacy) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(legacy), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("vae_pair", ["two_blocks"], indirect=True)
def test_bfloat16_close_to_float32(vae_pair):
    model, _, _, folder = vae_pair
    module, params = mv2_jax.load_component(folder, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))

    @jax.jit
    def run(v, x, z):
        post = module.apply(v, x, method="encode")
        return post.mean, post.logvar, module.apply(v, z, method="decode")

    x = _image((1, 16, 16, 3))
    z = _image((1, 4, 4, module.latent_channels), seed=2)
    actual = run({"params": params}, x, z)
    ref = _torch_posterior(model, x)
    expected = [nchw_to_nhwc(t.numpy()) for t in (ref.mean, ref.logvar)] + [_torch_decode(model, z)]
    assert actual[2].dtype == jnp.bfloat16
    # Against the fp32 reference. Measured over five tiny configs × two weight seeds: mean ≤ 0.020,
    # logvar ≤ 0.020, decode ≤ 0.022 (bf16 keeps 8 significant bits; a dozen layers compound).
    for name, a, e in zip(("mean", "logvar", "decode"), actual, expected):
        a = np.asarray(a, np.float32)
        assert np.isfinite(a).all(), name
        assert relative_error(a, e) <= 0.03, name


@pytest.fixture(scope="module")
def tiling_pair(tmp_path_factory):
    """The two-block VAE (mid attention on, so tiles really differ from the whole) whose
    diffusers twin tiles at sample_size=32: 16-latent tiles every 12 latents, 8-pixel blends."""
    model = _torch_vae(CONFIGS["two_blocks"], seed=5)
    folder = tmp_path_factory.mktemp("tiling")
    model.save_pretrained(folder)
    module, params = mv2_jax.load_component(folder)
    return model, module, {"params": params}


def test_tiled_decode_matches_diffusers(tiling_pair):
    model, module, v = tiling_pair
    # 40 × 28 latents: full, full, full and 4-high tiles down, full, full and 4-wide across.
    z = _image((2, 40, 28, 4), seed=6)
    small = _image((1, 16, 12, 4), seed=7)  # fits in one tile: decoded whole, as diffusers does
    plain = _torch_decode(model, z)
    model.enable_tiling()
    try:
        expected, expected_small = _torch_decode(model, z), _torch_decode(model, small)
    finally:
        model.disable_tiling()
    assert relative_error(expected, plain) > 0.01  # tiling is really in play
    tiled = partial(module.apply, method="tiled_decode")
    tiled, small_out = jax.jit(lambda v, z, s: (tiled(v, z), tiled(v, s)))(v, z, small)
    assert relative_error(tiled, expected) <= TOL
    assert relative_error(small_out, expected_small) <= TOL


def test_tiled_encode_matches_diffusers(tiling_pair):
    model, module, v = tiling_pair
    # 32-pixel tiles every 24 rows (the last 8 high); one column, so two tile shapes to compile
    # (the decode test covers blending in both directions).
    x = _image((1, 80, 24, 3), seed=8)
    model.enable_tiling()
    try:
        ref = _torch_posterior(model, x)
    finally:
        model.disable_tiling()
    post = jax.jit(partial(module.apply, method="tiled_encode"))(v, x)
    assert relative_error(post.mean, nchw_to_nhwc(ref.mean.numpy())) <= TOL
    assert relative_error(post.logvar, nchw_to_nhwc(ref.logvar.numpy())) <= TOL


def test_tile_size_that_does_not_tile_evenly_is_rejected(tiling_pair):
    _, module, v = tiling_pair
    with pytest.raises(ValueError, match="does not tile evenly"):
        module.apply(v, jnp.zeros((1, 40, 40, 4)), 30, method="tiled_decode")


def test_video_frame_chunks_match_diffusers_per_frame(tiling_pair):
    model, module, v = tiling_pair

    @jax.jit
    def run(v, z, x):
        # 3 frames in chunks of 2 (one lax.map step and a remainder); tiled: one chunk of 3.
        return (
            module.apply(v, z, frames_per_chunk=2, method="decode_video"),
            module.apply(v, z, frames_per_chunk=3, tiled=True, method="decode_video"),
            module.apply(v, x, frames_per_chunk=2, method="encode_video").mean,
        )

    z, x = _image((1, 3, 20, 8, 4), seed=9), _image((1, 2, 16, 8, 3), seed=10)
    decoded, decoded_tiled, mean = run(v, z, x)
    assert decoded.shape == decoded_tiled.shape == (1, 3, 40, 16, 3)
    assert mean.shape == (1, 2, 8, 4, 4)
    assert relative_error(decoded, _torch_decode(model, z[0])[None]) <= TOL
    expected = nchw_to_nhwc(_torch_posterior(model, x[0]).mean.numpy())[None]
    assert relative_error(mean, expected) <= TOL
    model.enable_tiling()
    try:
        expected = _torch_decode(model, z[0])[None]
    finally:
        model.disable_tiling()
    assert relative_error(decoded_tiled, expected) <= TOL


def test_truncated_checkpoint_raises(tmp_path):
    _torch_vae(CONFIGS["two_blocks"]).save_pretrained(tmp_path)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match="truncated"):
        mv2_jax.load_component(tmp_path)


def test_config_of_another_model_raises(tmp_path):
    _torch_vae(CONFIGS["two_blocks"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_out_channels"] = [8, 24]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightMismatchError, match="mis-shaped") as info:
        mv2_jax.load_component(tmp_path)
    assert any("up_blocks_0" in item[0] for item in info.value.misshaped)


def test_unsupported_block_type_raises(tmp_path):
    _torch_vae(CONFIGS["two_blocks"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["down_block_types"] = ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match="AttnDownEncoderBlock2D"):
        mv2_jax.load_component(tmp_path)
