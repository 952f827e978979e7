"""The video-to-video pipeline on a tiny random AnimateDiff pipeline: a V2V folder converted from
it (zero low-res channels and noise-level table) loads through load_pipeline and samples exactly
what the image-to-video pipeline does; once those weights act, the low-res video and the noise
level change the output without a recompile; SDEdit from the I2V folder noises the upsampled
video to `strength` exactly; the tiled VAE decodes as diffusers' tiled VAE; bad input is named."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.diffusion.sampler import steps_bucket  # noqa: E402
from mv2_jax.diffusion.schedulers import make_scheduler  # noqa: E402
from mv2_jax.pipelines.loading import load_i2v_pipeline, load_v2v_pipeline  # noqa: E402
from mv2_jax.pipelines.v2v import VideoToVideoPipeline  # noqa: E402
from mv2_jax.weights.convert import write_component  # noqa: E402
from mv2_jax.weights.load import read_config  # noqa: E402
from mv2_jax.weights.v2v import v2v_unet_from_i2v  # noqa: E402
from tests.pipelines.tiny import tiny_animatediff_pipeline  # noqa: E402
from tests.reference import relative_error  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# conditionings of the I2V stage off (they are I2V's tests); 3 frames, 8² → 16²
CALL = dict(num_inference_steps=2, height=16, width=16, scheduler="ddim", reference_scale=None,
            controlnet_scale=None, ip_adapter_scale=None)  # fmt: skip


CALL_10 = {**CALL, "num_inference_steps": 10}


def write_v2v_folder(i2v_folder, out):
    """An AnimateDiff folder → a VideoToVideoPipeline folder with the converted UNet (what a
    V2V training run exports before any step)."""
    shutil.copytree(i2v_folder, out)
    _, params = mv2_jax.load_component(i2v_folder / "unet")
    config, params = v2v_unet_from_i2v(read_config(i2v_folder / "unet"), params)
    shutil.rmtree(out / "unet")
    write_component(out / "unet", config, params)
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = "VideoToVideoPipeline"
    (out / "model_index.json").write_text(json.dumps(index))
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2v")
    tiny_animatediff_pipeline(root / "i2v")
    return root / "i2v", write_v2v_folder(root / "i2v", root / "v2v")


def _video(seed=0, size=8, frames=3):
    """Frames in [0,1] that uint8 holds exactly (the pipeline reads video as uint8)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3))
    return (pixels / 255).astype(np.float32)


def _latents(seed=0, size=8):
    return np.random.default_rng(seed).standard_normal((1, 3, size, size, 4), np.float32)


def test_v2v_from_i2v_is_i2v_then_low_res_and_level_act(folders):
    i2v_folder, v2v_folder = folders
    pipe = mv2_jax.load_pipeline(v2v_folder)
    assert isinstance(pipe, VideoToVideoPipeline) and pipe.unet.in_channels == 8
    assert pipe.takes_low_res
    video, key = _video(0), _video(5)[0]
    out = pipe(video, "a cat", image=key, latents=_latents(), noise_level=20, **CALL)
    assert out.shape == (1, 3, 16, 16, 3)

    i2v = load_i2v_pipeline(i2v_folder)
    expected = i2v(key, "a cat", num_frames=3, latents=_latents(), noise_prior="none", **CALL)
    # the zero conv_in rows add exact zeros; XLA sums 8 input channels in another order than 4
    assert relative_error(out, expected) <= 1e-5

    # a new video, level and prompt: the same program; zero weights ignore video and level
    again = pipe(_video(1), "a dog", image=key, latents=_latents(), noise_level=300, **CALL)
    assert pipe.trace_count == 1
    cat = pipe(_video(1), "a cat", image=key, latents=_latents(), noise_level=300, **CALL)
    np.testing.assert_array_equal(cat, out)
    assert relative_error(again, out) > 1e-3  # the prompt acts

    # weights that read the low-res channels and the level (as after training)
    params = dict(pipe.unet_params)
    rng = np.random.default_rng(3)
    kernel = np.asarray(params["conv_in"]["kernel"]).copy()
    kernel[:, :, 4:] = 0.2 * rng.standard_normal(kernel[:, :, 4:].shape)
    table = 0.2 * rng.standard_normal(params["class_embedding"]["embedding"].shape)
    params.update(conv_in={**params["conv_in"], "kernel": kernel},
                  class_embedding={"embedding": table.astype(np.float32)})  # fmt: skip
    pipe.unet_params = params
    run = lambda video, level: pipe(  # noqa: E731
        video, "a cat", image=key, latents=_latents(), noise_level=level, **CALL
    )
    trained = run(video, 20)
    assert relative_error(trained, out) > 1e-3
    assert relative_error(run(_video(1), 20), trained) > 1e-3
    assert relative_error(run(video, 300), trained) > 1e-3
    assert pipe.trace_count == 1


def test_sdedit_noises_the_upsampled_video_to_strength(folders):
    """An I2V folder loads as SDEdit. With a UNet that predicts ε̂ = 0 (zero conv_out), a DDIM
    step (η = 0) from t to t' = t − T/n is x ← x·√(ᾱ_t'/ᾱ_t) (ᾱ = 1 below 0), so the output
    follows in closed form from x_s = √ᾱ_s·z + √(1−ᾱ_s)·ε at the first step run, t_s =
    timesteps[start_index(strength)]: z the latents of the bilinearly upsampled video, ε the
    given noise. Strength is traced."""
    pipe = load_v2v_pipeline(folders[0])
    assert not pipe.takes_low_res
    params = dict(pipe.unet_params)
    params["conv_out"] = jax.tree.map(jnp.zeros_like, params["conv_out"])
    pipe.unet_params = params
    video, noise = _video(2), _latents()
    vae, vae_params = pipe.vae, pipe.vae_params
    upsampled = jax.image.resize(video, (3, 16, 16, 3), "linear")
    z = vae.apply({"params": vae_params}, 2 * upsampled - 1, method="encode").mode()
    scheduler = make_scheduler(pipe.scheduler_config, "ddim")
    timesteps = scheduler.tables(10, steps_bucket(10))["timesteps"]
    alphas = scheduler.train_alphas_cumprod()
    for strength in (0.5, 0.1):
        out = pipe(video, "a cat", strength=strength, latents=noise, **CALL_10)
        start = scheduler.start_index(10, strength)
        a = alphas[int(timesteps[start])]
        latents = np.sqrt(a) * vae.to_diffusion_latents(z) + np.sqrt(1 - a) * noise[0]
        for t in timesteps[start:10].astype(int):
            a_prev = alphas[t - 100] if t >= 100 else 1.0
            latents = latents * np.sqrt(a_prev / alphas[t])
        decoded = vae.apply({"params": vae_params}, vae.from_diffusion_latents(latents),
                            method="decode")  # fmt: skip
        expected = np.clip(np.asarray(decoded) / 2 + 0.5, 0, 1)[None]
        assert relative_error(out, expected) <= 1e-5, strength
    assert pipe.trace_count == 1


def test_tiled_vae_is_diffusers_tiled_vae(folders):
    """With `vae_tile_size` (32² frames: 16² pixel tiles, 8² latents, blended over 4 px) the
    pipeline's decode is diffusers' tiled decode frame by frame (`enable_tiling`), in chunks of
    2 frames; tiles normalise on their own (GroupNorm), so this is not the untiled decode, as in
    diffusers. (The VAE's tiled encode has its own parity test in tests/models/test_vae.py.)"""
    pipe = load_v2v_pipeline(folders[1])
    ref = diffusers.AutoencoderKL.from_pretrained(folders[1] / "vae").eval()
    latents = _latents(1, 16)
    decode = jax.jit(lambda p, z: pipe.decode_latents(p, z, chunk=2, tile=16))
    decoded = decode(pipe.vae_params, latents)  # what a call with vae_tile_size=16 decodes
    frames = torch.from_numpy(latents[0]).permute(0, 3, 1, 2) / ref.config.scaling_factor
    with torch.no_grad():
        whole = ref.decode(frames).sample
        ref.enable_tiling()
        expected = ref.decode(frames).sample
    expected = (expected / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[None]
    assert relative_error(decoded, expected) <= 1e-4
    assert relative_error(expected[0], (whole / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)) > 0.01


def test_errors_name_the_problem(folders):
    pipe = load_v2v_pipeline(folders[1])
    with pytest.raises(ValueError, match="smaller than the input"):
        pipe(_video(0, 24), "a cat", **CALL)
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe(_video(), "a cat", **{**CALL, "height": 20})
    with pytest.raises(ValueError, match="motion_max_seq_length"):
        pipe(_video(frames=9), "a cat", **CALL)
    with pytest.raises(ValueError, match=r"RGB frames \[F,H,W,3\]"):
        pipe(_video()[..., :2], "a cat", **CALL)
    with pytest.raises(ValueError, match="embeds levels 0 to 999"):
        pipe(_video(), "a cat", noise_level=1000, **CALL)
    with pytest.raises(ValueError, match="multiple of 2"):
        pipe(_video(0, 7), "a cat", **CALL)
    with pytest.raises(ValueError, match="no step to run"):
        pipe(_video(), "a cat", strength=0.01, **CALL)
