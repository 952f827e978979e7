"""Pipelines given an LCM-distilled UNet (config `time_cond_proj_dim`), against diffusers on tiny
random models: the T2I pipeline embeds the guidance scale as `timestep_cond` and runs one
unguided UNet call per step, as diffusers' LatentConsistencyModel, StableDiffusion and
StableDiffusionXL pipelines do; a new guidance scale compiles nothing; `sample.py t2i` runs such
a folder. The T2V pipeline, as diffusers' AnimateDiffPipeline, builds no embedding and guides as
usual. LCM's re-noising draws are pinned to ours (`diffusers_draws_our_step_noise`)."""

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from tests.pipelines.tiny import (  # noqa: E402
    tiny_animatediff_pipeline,
    tiny_lcm_pipeline,
    tiny_sdxl_pipeline,
)
from tests.reference import diffusers_draws_our_step_noise  # noqa: E402

pytestmark = pytest.mark.torch
TOLERANCE = 2e-3  # max abs difference of [0,1] images (issue 22)
PROMPTS = ["a photo of a cat", "two dogs"]
SEED = 5  # our per-step noise; the starting latents are given to both sides
CALL = dict(guidance_scale=8.0, height=16, width=16)


@pytest.fixture(scope="module")
def lcm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lcm") / "pipe"
    tiny_lcm_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def lcm_pipe(lcm_folder):
    return mv2_jax.load_pipeline(lcm_folder)


def recording_unet_calls(pipe) -> list:
    """`(x.shape, timestep_cond's shape or None)` of every UNet call `pipe` traces from now."""
    calls, apply = [], pipe.apply_unet

    def recorded(program, variables, inputs, x, t, **kwargs):
        cond = inputs.get("timestep_cond")
        calls.append((x.shape, None if cond is None else cond.shape))
        return apply(program, variables, inputs, x, t, **kwargs)

    pipe.apply_unet = recorded
    return calls


def _reference(ref, latents, steps, **call):
    """diffusers' images, its LCM re-noising drawing our step noise."""
    ref.set_progress_bar_config(disable=True)
    with diffusers_draws_our_step_noise(SEED) as draws:
        out = ref(PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=steps,
                  output_type="np", **call)  # fmt: skip
    assert len(draws) == steps - 1  # the re-noising ran and took our noise
    return out.images


def _ours(pipe, latents, steps, **call):
    run = dict(num_inference_steps=steps, seed=SEED, **call)
    return pipe(PROMPTS, latents=latents.transpose(0, 2, 3, 1), **run)


def _latents(seed=0):
    return np.random.default_rng(seed).standard_normal((2, 4, 8, 8), np.float32)


@pytest.mark.parametrize("steps,guidance", [(1, 8.0), (2, 8.0), (4, 8.0), (4, 1.0)])
def test_lcm_folder_matches_latent_consistency_pipeline(lcm_folder, lcm_pipe, steps, guidance):
    """Measured 2.4e-5 at guidance 8: the embedding of 1000·w in fp32 is ill-conditioned
    (arguments up to 7000 rad, so one ulp of a frequency, where torch's exp and XLA's differ,
    moves a sine by 1e-4); at guidance 1 (w = 0, an exact embedding) 1.1e-6."""
    call = dict(CALL, guidance_scale=guidance)
    ref = diffusers.LatentConsistencyModelPipeline.from_pretrained(lcm_folder)
    expected = _reference(ref, _latents(), steps, **call)
    ours = _ours(lcm_pipe, _latents(), steps, **call)  # the folder's LCMScheduler
    assert ours.shape == expected.shape == (2, 16, 16, 3)
    assert np.abs(ours - expected).max() <= (1e-5 if guidance == 1 else TOLERANCE)


def test_lcm_unet_in_stable_diffusion_pipeline_matches(lcm_folder, lcm_pipe):
    """StableDiffusionPipeline + LCMScheduler with the same UNet: guidance as an embedding,
    the negative prompt unused (no negative branch), and our default guidance is
    LatentConsistencyModelPipeline's 8.5."""
    components = diffusers.LatentConsistencyModelPipeline.from_pretrained(lcm_folder).components
    ref = diffusers.StableDiffusionPipeline(**components)
    call = dict(CALL, negative_prompt=["blurry", "dark"], guidance_scale=8.5)
    expected = _reference(ref, _latents(1), 4, **call)
    call.pop("guidance_scale")
    ours = _ours(lcm_pipe, _latents(1), 4, scheduler="lcm", **call)
    assert lcm_pipe.default_guidance_scale == 8.5
    assert np.abs(ours - expected).max() <= TOLERANCE  # measured 1.0e-5


def test_one_unet_call_per_step_and_a_new_guidance_compiles_nothing(lcm_folder):
    pipe = mv2_jax.load_pipeline(lcm_folder)
    calls = recording_unet_calls(pipe)
    first = pipe("a cat", negative_prompt="dark", num_inference_steps=4, seed=1, **CALL)
    # One traced step body, one UNet call of the batch (no [uncond; cond] doubling), with the
    # guidance embedding of the batch.
    assert calls == [((1, 8, 8, 4), (1, 32))]
    traces = pipe.trace_count
    others = [
        pipe("a cat", num_inference_steps=steps, seed=1, **dict(CALL, guidance_scale=scale))
        for steps, scale in ((4, 3.0), (2, 8.0), (4, 1.0))
    ]
    assert pipe.trace_count == traces and len(calls) == 1
    assert all(np.abs(first - other).max() > 1e-3 for other in others)  # guidance reaches it
    assert pipe.unet_calls("a cat", num_inference_steps=4, **dict(CALL, guidance_scale=8.0)) == 4


def test_sdxl_lcm_unet_matches_diffusers(tmp_path):
    """An SDXL-layout UNet with `time_cond_proj_dim` (lcm-sdxl's) vs StableDiffusionXLPipeline
    with LCMScheduler from the folder's config, as its model card runs it."""
    ref = tiny_sdxl_pipeline(tmp_path / "sdxl", time_cond_proj_dim=24)
    ref.scheduler = diffusers.LCMScheduler.from_config(ref.scheduler.config)
    expected = _reference(ref, _latents(2), 4, **CALL)
    pipe = mv2_jax.load_pipeline(tmp_path / "sdxl")
    calls = recording_unet_calls(pipe)
    ours = _ours(pipe, _latents(2), 4, scheduler="lcm", **CALL)
    assert calls == [((2, 8, 8, 4), (2, 24))]
    assert np.abs(ours - expected).max() <= TOLERANCE  # measured 1.1e-6


def test_t2v_guides_an_lcm_unet_as_animatediff_does(tmp_path):
    """diffusers' AnimateDiffPipeline never builds `timestep_cond`: the motion UNet's cond_proj
    stays unused and guidance doubles the batch; ours the same, to the same frames."""
    ref = tiny_animatediff_pipeline(tmp_path / "ad", time_cond_proj_dim=32)
    assert ref.unet.config.time_cond_proj_dim == 32
    ref.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(3).standard_normal((1, 4, 2, 8, 8), np.float32)
    call = dict(num_inference_steps=2, guidance_scale=7.5, num_frames=2, height=16, width=16)
    expected = ref("a cat", latents=torch.from_numpy(latents), output_type="np", **call).frames
    pipe = mv2_jax.load_pipeline(tmp_path / "ad")
    calls = recording_unet_calls(pipe)
    ours = pipe("a cat", latents=latents.transpose(0, 2, 3, 4, 1), **call)
    assert not pipe.guidance_embedded and calls == [((2, 2, 8, 8, 4), None)]
    assert pipe.unet_calls("a cat", **call) == 2 * 2  # two steps, each guided
    assert np.abs(ours - np.asarray(expected)).max() <= TOLERANCE  # measured 5.9e-6


def test_sample_t2i_runs_an_lcm_folder(lcm_folder, lcm_pipe, monkeypatch, tmp_path):
    """`sample.py t2i --model LCM_FOLDER --scheduler lcm --steps 4 --guidance-scale 8` writes the
    pipeline's images; without `--scheduler` the folder's LCMScheduler runs, to the same
    images. (The loader hands back the pipeline above, so nothing compiles again.)"""
    from tests.test_sample_cli import sample

    def load(path, dtype):
        assert str(path) == str(lcm_folder) and np.dtype(dtype) == np.float32
        return lcm_pipe

    monkeypatch.setitem(vars(mv2_jax), "load_pipeline", load)
    argv = ["t2i", "--model", str(lcm_folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    argv += ["--steps", "4", "--guidance-scale", "8", "--height", "16", "--width", "16"]
    argv += ["--seed", "9"]
    assert sample.main([*argv, "--scheduler", "lcm", "--out", str(tmp_path / "a")]) == 0
    assert sample.main([*argv, "--out", str(tmp_path / "b")]) == 0
    direct = lcm_pipe(PROMPTS, num_inference_steps=4, seed=9, **CALL)
    for folder in ("a", "b"):
        for i in range(2):
            written = np.asarray(Image.open(tmp_path / folder / f"0000{i}.png"))
            np.testing.assert_array_equal(written, np.round(direct[i] * 255).astype(np.uint8))
    meta = json.loads((tmp_path / "b" / "00000.json").read_text())
    assert (meta["model_scheduler"], meta["scheduler"]) == ("LCMScheduler", None)
    assert meta["guidance_scale"] == 8.0
