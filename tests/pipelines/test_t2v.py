"""End-to-end parity of `load_pipeline` text-to-video with diffusers' AnimateDiffPipeline on a
tiny random pipeline, given the same initial latents (DDIM with guidance, Euler without); the
UNet2D + MotionAdapter folder layout; no recompiles; and errors that name the fix."""

import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.weights.convert import convert_pipeline_folder  # noqa: E402
from tests.pipelines.tiny import tiny_animatediff_pipeline  # noqa: E402
from tests.weights.tiny_models import tiny_unet  # noqa: E402

pytestmark = pytest.mark.torch

TOLERANCE = 2e-3  # max abs difference of [0,1] frames, as for the T2I pipelines
# 2 videos × 3 frames decoded 4 frames at a time: two chunks, the last one padded.
CALL = dict(num_inference_steps=3, num_frames=3, height=16, width=16, decode_chunk_size=4)
PROMPTS = ["a photo of a cat", "two dogs"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("animatediff") / "pipe"
    tiny_animatediff_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(folder):
    return mv2_jax.load_pipeline(folder)


def _latents(seed=0):
    """Unit noise as diffusers takes it, `[B, C, F, h, w]`."""
    return np.random.default_rng(seed).standard_normal((2, 4, 3, 8, 8), np.float32)


@pytest.mark.parametrize(
    "scheduler,diffusers_class,kwargs",
    [  # measured max abs differences: 4.8e-6 and 9.2e-7
        ("ddim", "DDIMScheduler", dict(guidance_scale=7.5, negative_prompt=["blurry", "dark"])),
        ("euler", "EulerDiscreteScheduler", dict(guidance_scale=1.0)),  # no guidance
    ],
)
def test_matches_diffusers(folder, pipe, scheduler, diffusers_class, kwargs):
    ref = diffusers.AnimateDiffPipeline.from_pretrained(folder)
    ref.scheduler = getattr(diffusers, diffusers_class).from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    latents = _latents()
    expected = ref(
        PROMPTS, latents=torch.from_numpy(latents), output_type="np", **CALL, **kwargs
    ).frames
    ours = pipe(PROMPTS, scheduler=scheduler, latents=latents.transpose(0, 2, 3, 4, 1), **CALL,
                **kwargs)  # fmt: skip
    assert ours.shape == expected.shape == (2, 3, 16, 16, 3)
    assert np.isfinite(ours).all()
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_new_prompt_seed_guidance_and_steps_do_not_recompile(pipe):
    def run(prompts, steps, guidance, seed, latents=None):
        kwargs = {**CALL, "num_inference_steps": steps}
        return pipe(prompts, guidance_scale=guidance, seed=seed, scheduler="ddim", latents=latents,
                    **kwargs)  # fmt: skip

    # the DDIM + guidance compilation of the parity test, given latents or drawing its own
    traces = pipe.trace_count
    run(PROMPTS, 3, 7.5, 0, _latents(5).transpose(0, 2, 3, 4, 1))
    first = run(PROMPTS, 4, 7.5, 1)
    again = run(PROMPTS, 4, 7.5, 1)
    other = run(["a red dog", "sky"], 2, 4.0, 7)
    assert pipe.trace_count - traces <= 1  # at most this one, if the parity test did not run
    np.testing.assert_array_equal(first, again)  # the same seed gives the same video
    assert np.abs(first - other).max() > 1e-3


def test_unet2d_plus_motion_adapter_folder(folder, pipe, tmp_path):
    """A folder whose `unet` is the image UNet: merged with `motion_adapter/` on loading, as
    AnimateDiffPipeline's constructor does, into the very params diffusers saved merged."""
    other = tmp_path / "pipe"
    shutil.copytree(folder, other)
    shutil.rmtree(other / "unet")
    tiny_unet().save_pretrained(other / "unet")  # the UNet the tiny pipeline was built from
    index = json.loads((other / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    merged = mv2_jax.load_pipeline(other)
    assert merged.unet == pipe.unet
    jax.tree.map(np.testing.assert_array_equal, merged.unet_params, pipe.unet_params)
    # converting it writes the merged motion UNet (the adapter lives inside it)
    convert_pipeline_folder(other, tmp_path / "converted", log=lambda _: None)
    converted = mv2_jax.load_pipeline(tmp_path / "converted")
    assert converted.unet == pipe.unet
    jax.tree.map(np.testing.assert_array_equal, converted.unet_params, pipe.unet_params)

    shutil.rmtree(other / "motion_adapter")
    with pytest.raises(FileNotFoundError, match="no motion_adapter folder"):
        mv2_jax.load_pipeline(other)


def test_wrong_inputs_give_clear_errors(pipe):
    with pytest.raises(ValueError, match="motion_max_seq_length"):
        pipe("x", num_frames=9)  # the tiny adapter has positions for 8 frames
    with pytest.raises(ValueError, match=r"\[B, F, h, w, C\]"):
        pipe("x", num_frames=3, latents=np.zeros((1, 4, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe("x", height=20)
    with pytest.raises(ValueError, match="decode_chunk_size"):
        pipe("x", num_frames=3, decode_chunk_size=0)
