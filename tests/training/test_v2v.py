"""The V2V stage (`configs/v2v.py:tiny` at its smallest) through `train(config, workdir)`: the
loss falls, the spatial layers stay bit-identical while the motion modules, conv_in (its new
low-res channels) and the noise-level table move, the converted UNet starts as the I2V UNet,
the I2V conditionings start from the I2V UNet inside, and the run exports as a
VideoToVideoPipeline folder.

One training run (one step compile) is shared by the module, with the conditionings off (their
training is test_i2v.py's); the random I2V model it starts from gets numpy-drawn params, which
saves the ≈20 s XLA compile of a motion UNet's `init`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.i2v import tiny_model
from configs.v2v import get_config
from mv2_jax import load_component
from mv2_jax.diffusion.low_res import MAX_NOISE_LEVEL
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training import random_pipeline, restore_params
from mv2_jax.training.trainer import train
from mv2_jax.training.v2v import VideoToVideoStage, v2v_unet_config
from mv2_jax.weights.convert import write_component
from mv2_jax.weights.load import build_module, read_config
from mv2_jax.weights.registry import param_shapes
from mv2_jax.weights.v2v import i2v_unet_from_v2v
from tests.training.conftest import with_overrides

pytestmark = pytest.mark.slow  # one tiny training run (~40 s)

STEPS = 6
FRAMES = 2
BATCH = 8  # one clip per simulated device
SIZE = 16  # target pixels; the tiny VAE halves: 8² latents, from 8² pixels' 4² latents


def one_level_i2v_model() -> dict:
    """configs/i2v.py's tiny model with a one-level UNet (ResNets and motion modules each way,
    cross-attention in the mid block only): under half the two-level UNet's step compile."""
    model = tiny_model()
    model["unet"].update(
        block_out_channels=[32],
        down_block_types=["DownBlockMotion"],
        up_block_types=["UpBlockMotion"],
    )
    return model


def numpy_random_component(config, seed: int, out) -> None:
    """`random_pipeline`'s component writer with params drawn by numpy (norm scales 1, biases
    0, other weights N(0, 1/fan_in)) at shapes from `eval_shape`: nothing compiles."""
    module, family = build_module(dict(config), jnp.float32)
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        if name in ("scale", "bias"):
            return np.full(shape.shape, float(name == "scale"), np.float32)
        fan_in = int(np.prod(shape.shape[:-1])) or 1
        return (rng.standard_normal(shape.shape) / np.sqrt(fan_in)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, param_shapes(module, family))
    write_component(out, config, params)


@pytest.fixture(scope="module")
def i2v_pipeline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(random_pipeline, "_random_component", numpy_random_component)
        folder = tmp_path_factory.mktemp("v2v") / "i2v_pipeline"
        return random_pipeline.write_random_pipeline(one_level_i2v_model(), folder, seed=0)


def v2v_config(pipeline, **overrides):
    """configs/v2v.py:tiny at its smallest on `pipeline`, with `overrides` ("a.b": value)."""
    small = {"data.height": SIZE, "data.width": SIZE, "data.num_frames": FRAMES}
    small["model.pipeline"] = str(pipeline)
    return with_overrides(get_config("tiny"), {**small, **overrides})


@pytest.fixture(scope="module")
def trained(i2v_pipeline, video_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("v2v_run")
    config = v2v_config(
        i2v_pipeline,
        **{"data.video_dir": str(video_data), "i2v.appearance_encoder": False},
        **{"i2v.controlnet": False, "batch_size": BATCH, "total_steps": STEPS, "lr": 3e-3},
        **{"warmup_steps": 1, "checkpoint_every": STEPS, "log_every": 1},
    )
    state = train(config, workdir)
    return workdir, jax.tree.map(np.asarray, state.params)


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_loss_falls(trained):
    workdir, _ = trained
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == STEPS - 1 and np.isfinite(losses).all()  # step 1 starts the clock
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:2]), losses


def test_spatial_layers_frozen_new_parts_train(trained, i2v_pipeline):
    _, params = trained
    _, i2v = load_component(i2v_pipeline / "unet")  # the I2V UNet the run started from
    before, after = flat(i2v), flat(params["unet"])
    assert set(after) == set(before) | {"class_embedding/embedding"}
    motion = [n for n in after if "/motion_modules_" in n]
    trained_names = {*motion, "conv_in/kernel", "conv_in/bias", "class_embedding/embedding"}
    for name in set(after) - trained_names:  # frozen: bit-identical
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert all(np.abs(after[n] - before[n]).max() > 0 for n in motion)
    kernel = after["conv_in/kernel"]  # [3, 3, 4 + 4, C]: the low-res channels started at 0
    assert kernel.shape[2] == 8 and (np.abs(kernel[:, :, 4:]).max(axis=(0, 1, 3)) > 0).all()
    levels = np.abs(after["class_embedding/embedding"]).max(axis=1)  # rows of the levels seen
    assert 0 < np.count_nonzero(levels) <= BATCH * STEPS


def test_starts_as_the_i2v_unet_with_its_conditionings(i2v_pipeline):
    """The initial params: the I2V UNet's inside the V2V UNet's (its conv_in rows for the noisy
    latents, everything else) with zero low-res rows and a zero noise-level table, so the UNet
    computes what the I2V UNet did (tests/weights/test_v2v.py); the appearance encoder is the
    I2V UNet's spatial part and the ControlNet copies its encoder. The loss traces with both."""
    config = v2v_config(i2v_pipeline, **{"v2v.max_noise_level": 100})  # both conditionings on
    stage = VideoToVideoStage.from_config(config, i2v_pipeline, make_mesh("data:-1"))
    params = stage.load_params(jax.tree.map(lambda _: None, stage.param_shapes()))
    _, i2v = load_component(i2v_pipeline / "unet")
    unet = flat(params["unet"])
    np.testing.assert_array_equal(unet["conv_in/kernel"][:, :, 4:], 0.0)
    np.testing.assert_array_equal(unet["class_embedding/embedding"], 0.0)
    _, inside = i2v_unet_from_v2v({"in_channels": 8}, params["unet"])
    jax.tree.map(np.testing.assert_array_equal, inside, i2v)
    appearance, before = flat(params["appearance"]), flat(i2v)
    assert appearance and all(n in before and "motion_modules_" not in n for n in appearance)
    for name, value in appearance.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    controlnet = flat(params["controlnet"])
    np.testing.assert_array_equal(controlnet["conv_in/kernel"], before["conv_in/kernel"])
    assert controlnet["controlnet_cond_embedding/kernel"].shape[2] == 4 + 1  # latent + mask
    # the loss of configs/v2v.py's default, both conditionings on (traced, not compiled)
    batch = {
        "pixels": jax.ShapeDtypeStruct((2, FRAMES, SIZE, SIZE, 3), jnp.float32),
        "input_ids": jax.ShapeDtypeStruct((2, 1, 77), jnp.int32),
    }
    keys = jax.random.split(jax.random.key(0), 2)
    loss, _ = jax.eval_shape(stage.loss, params, stage.consts, batch, keys)
    assert loss.shape == ()


def test_bad_setups_name_the_key(i2v_pipeline, tmp_path):
    assert get_config("sd15").v2v.max_noise_level == MAX_NOISE_LEVEL  # the x4 upscaler's
    mesh = make_mesh("data:-1")
    cases = {
        r"data\.precomputed_dir": {"data.precomputed_dir": str(tmp_path)},
        r"v2v\.scale=1\.0": {"v2v.scale": 1.0},
        r"v2v\.max_noise_level=1000.*num_class_embeds": {"v2v.max_noise_level": 1000},
    }
    for message, overrides in cases.items():
        with pytest.raises(ValueError, match=message):
            config = v2v_config(i2v_pipeline, **overrides)
            VideoToVideoStage.from_config(config, i2v_pipeline, mesh)


def test_export_makes_a_video_to_video_folder(trained, i2v_pipeline, tmp_path):
    """The run as a pipeline folder: the V2V UNet (8 input channels, noise-level table) with the
    run's EMA weights beside the I2V pipeline's VAE, text encoder, tokenizer and scheduler;
    load_pipeline reads it as a VideoToVideoPipeline (sampling from such a folder is
    tests/pipelines/test_v2v.py's; its compile would double this module's time), and a next V2V
    run takes its UNet as it is."""
    from mv2_jax import load_pipeline
    from mv2_jax.pipelines.v2v import VideoToVideoPipeline
    from mv2_jax.training.export import export_pipeline

    workdir, _ = trained
    out = export_pipeline(workdir, tmp_path / "exported")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "VideoToVideoPipeline"
    assert index["unet"] == ["diffusers", "UNetMotionModel"]
    assert {"vae", "text_encoder", "tokenizer", "scheduler"} <= {p.name for p in out.iterdir()}
    pipe = load_pipeline(out)
    assert isinstance(pipe, VideoToVideoPipeline) and pipe.takes_low_res
    assert (pipe.unet.in_channels, pipe.unet.num_class_embeds) == (8, 1000)
    assert pipe.default_size == SIZE  # the training frames' size, not the I2V model's
    unet = pipe.unet_params
    jax.tree.map(np.testing.assert_array_equal, unet, restore_params(workdir, ema=True)["unet"])
    # the exported UNet starts a next V2V run as it is (no second conversion)
    unet_config = read_config(out / "unet")
    assert v2v_unet_config(unet_config, v2v_config(out)) == unet_config
