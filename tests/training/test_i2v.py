"""The I2V stage (`configs/i2v.py:tiny`) through `train(config, workdir)`: joint image+video
steps lower the video loss, only the configured params change (the spatial UNet stays
bit-identical; motion modules, appearance encoder and ControlNet move), a finished run resumes
from its checkpoint, and bad setups stop with errors that name the key to set.

The training run compiles a video and an image step of three UNets (≈80 s at the tests' XLA
settings on 2 cores), so its tests are `slow`; the others take seconds."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs.i2v import get_config, tiny_model
from mv2_jax import load_component
from mv2_jax.models.appearance import spatial_params
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training import restore_params
from mv2_jax.training.i2v import ImageToVideoStage
from mv2_jax.training.random_pipeline import write_random_pipeline
from mv2_jax.training.trainer import train
from tests.training.conftest import with_overrides

STEPS = 10  # image_ratio 0.25: steps 4 and 8 (1-based) train on images, the rest on clips


@pytest.fixture(scope="module")
def i2v_pipeline(tmp_path_factory):
    return write_random_pipeline(tiny_model(), tmp_path_factory.mktemp("i2v") / "pipe", seed=0)


def i2v_config(pipeline, **overrides):
    """configs/i2v.py:tiny on `pipeline`, with `overrides` ("a.b": value), locked."""
    return with_overrides(get_config("tiny"), {"model.pipeline": str(pipeline), **overrides})


@pytest.fixture(scope="module")
def trained(i2v_pipeline, image_data, video_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("i2v_run")
    config = i2v_config(
        i2v_pipeline,
        **{"data.video_dir": str(video_data), "data.image_dir": str(image_data)},
        **{"data.image_ratio": 0.25, "batch_size": 8, "total_steps": STEPS, "lr": 3e-3},
        **{"warmup_steps": 2, "checkpoint_every": 5, "log_every": 1},
    )
    state = train(config, workdir)
    return workdir, config, state


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.slow
def test_video_loss_falls_and_image_steps_run(trained):
    workdir, _, _ = trained
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, STEPS + 1))  # step 1 starts the clock
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert [r["grad_norm"] for r in rows if r["step"] % 4 == 0] == [0.0, 0.0]  # spatial: frozen
    video = [r["loss"] for r in rows if r["step"] % 4]
    first, last = np.mean(video[:2]), np.mean(video[-3:])
    assert last < 0.85 * first, video


@pytest.mark.slow
def test_only_the_configured_params_change(trained, i2v_pipeline):
    _, _, state = trained
    params = jax.tree.map(np.asarray, state.params)
    assert sorted(params) == ["appearance", "controlnet", "unet"]
    _, initial = load_component(i2v_pipeline / "unet")
    before, after = flat(initial), flat(params["unet"])
    motion = [n for n in after if "/motion_modules_" in n]
    assert motion and len(motion) < len(after)
    for name, value in after.items():
        if name in motion:
            continue
        np.testing.assert_array_equal(value, before[name], err_msg=name)  # frozen: bit-identical
    assert all(np.abs(after[n] - before[n]).max() > 0 for n in motion)

    appearance, start = flat(params["appearance"]), flat(spatial_params(initial))
    assert appearance.keys() == start.keys()
    changed = [n for n in appearance if np.abs(appearance[n] - start[n]).max() > 0]
    assert len(changed) > 0.9 * len(appearance), len(changed)

    controlnet = flat(params["controlnet"])
    zero_convs = [n for n in controlnet if n.startswith("controlnet_")]
    assert zero_convs and all(np.abs(controlnet[n]).max() > 0 for n in zero_convs)
    copied = "down_blocks_0/resnets_0/conv1/kernel"  # started as the UNet's
    assert np.abs(controlnet[copied] - before[copied]).max() > 0


@pytest.mark.slow
def test_a_finished_run_resumes_from_its_checkpoint(trained):
    workdir, config, state = trained
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "5"]
    again = train(config, workdir)
    assert int(again.step) == STEPS
    jax.tree.map(np.testing.assert_array_equal, again.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, restore_params(workdir), again.params)
    ema, final = flat(restore_params(workdir, ema=True)), flat(again.params)
    assert ema.keys() == final.keys()
    moved = {n.split("/")[0] for n in ema if np.abs(ema[n] - final[n]).max() > 0}
    assert moved == {"appearance", "controlnet", "unet"}  # the EMA of each trained part


def test_switched_off_conditionings_drop_their_params_and_globs(i2v_pipeline):
    config = i2v_config(i2v_pipeline, **{"i2v.controlnet": False, "data.num_frames": 2})
    stage = ImageToVideoStage.from_config(config, i2v_pipeline, make_mesh("data:-1"))
    shapes = stage.param_shapes()
    assert sorted(shapes) == ["appearance", "unet"]
    assert any("motion_modules_" in n for n in flat(shapes["unet"]))
    assert not any("motion_modules_" in n for n in flat(shapes["appearance"]))
    patterns = stage.trainable_patterns(config.trainable)
    assert patterns == ("unet/*motion_modules_*", "appearance/*")
    with pytest.raises(ValueError, match=r"only names switched-off parts"):
        stage.trainable_patterns(("controlnet/*",))


def test_bad_setups_name_the_key(i2v_pipeline, tmp_path):
    mesh = make_mesh("data:-1")
    with pytest.raises(ValueError, match=r"data\.num_frames=1"):
        ImageToVideoStage.from_config(
            i2v_config(i2v_pipeline, **{"data.num_frames": 1}), i2v_pipeline, mesh
        )
    with pytest.raises(ValueError, match=r"data\.num_frames=9.*motion_max_seq_length"):
        ImageToVideoStage.from_config(
            i2v_config(i2v_pipeline, **{"data.num_frames": 9}), i2v_pipeline, mesh
        )
    with pytest.raises(FileNotFoundError, match=r"i2v\.controlnet_from"):
        config = i2v_config(i2v_pipeline, **{"i2v.controlnet_from": str(tmp_path / "nowhere")})
        ImageToVideoStage.from_config(config, i2v_pipeline, mesh)
    image_pipeline = tmp_path / "sd"  # an image UNet and no motion adapter
    (image_pipeline / "unet").mkdir(parents=True)
    unet = {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64]}
    (image_pipeline / "unet" / "config.json").write_text(json.dumps(unet))
    with pytest.raises(ValueError, match=r"set config\.model\.motion_adapter"):
        ImageToVideoStage.from_config(i2v_config(image_pipeline), image_pipeline, mesh)
    with pytest.raises(FileNotFoundError, match=r"model\.motion_adapter"):
        config = i2v_config(image_pipeline, **{"model.motion_adapter": str(tmp_path / "none")})
        ImageToVideoStage.from_config(config, image_pipeline, mesh)


@pytest.mark.slow
def test_new_motion_modules_start_as_the_image_model(init_pipeline):
    """An SD UNet animated with new motion modules (config.model.new_motion_modules): the
    spatial params are the image UNet's and the motion UNet gives the image UNet's output on
    every frame until the motion modules train."""
    config = get_config("tiny")
    config.model.pipeline = str(init_pipeline)  # configs/t2i.py:tiny: an image UNet
    config.model.new_motion_modules = {"motion_num_attention_heads": 2, "motion_max_seq_length": 4}
    config.i2v.appearance_encoder = config.i2v.controlnet = False
    config.compute_dtype = "float32"
    config.lock()
    mesh = make_mesh("data:-1")
    stage = ImageToVideoStage.from_config(config, init_pipeline, mesh)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    unet = stage.load_params(stage.param_shardings(mesh, rules))["unet"]
    image_unet, image_params = load_component(init_pipeline / "unet")
    assert flat(spatial_params(unet)).keys() == flat(image_params).keys()
    jax.tree.map(np.testing.assert_array_equal, spatial_params(unet), image_params)
    motion = stage.denoiser.clone(skip_motion_for_images=False).motion_max_seq_length
    assert motion == 4

    clip = jax.random.normal(jax.random.key(0), (1, 3, 16, 16, 4))
    context = jax.random.normal(jax.random.key(1), (1, 77, 32))
    timesteps = jax.numpy.array([500])
    video = jax.jit(stage.denoiser.apply)({"params": unet}, clip, timesteps, context)
    per_frame = (clip[0], timesteps.repeat(3), context.repeat(3, axis=0))
    frames = jax.jit(image_unet.apply)({"params": image_params}, *per_frame)
    np.testing.assert_allclose(video[0], frames, atol=1e-5)
    with pytest.raises(ValueError, match=r"motion_adapter or new_motion_modules, not both"):
        both = i2v_config(init_pipeline, **{"model.motion_adapter": str(init_pipeline)})
        both.unlock()
        both.model.new_motion_modules = {"motion_max_seq_length": 4}
        ImageToVideoStage.from_config(both, init_pipeline, mesh)


@pytest.mark.slow
def test_export_makes_an_image_to_video_folder(trained, tmp_path):
    """The run exported as a pipeline folder: load_pipeline gives an ImageToVideoPipeline with
    the run's EMA weights in every component, and it turns a key image into frames."""
    from mv2_jax import load_pipeline
    from mv2_jax.pipelines.i2v import ImageToVideoPipeline
    from mv2_jax.training.export import export_pipeline, main

    workdir, _, _ = trained
    out = export_pipeline(workdir, tmp_path / "exported")
    pipe = load_pipeline(out)
    assert isinstance(pipe, ImageToVideoPipeline)
    expected = restore_params(workdir, ema=True)
    loaded = {
        "unet": pipe.unet_params,
        "appearance": pipe.appearance[1],
        "controlnet": pipe.controlnet[1],
    }
    for name, params in expected.items():
        jax.tree.map(np.testing.assert_array_equal, loaded[name], params)
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3))
    video = pipe(image, "a red ball", num_inference_steps=2, num_frames=4, height=32, width=32)
    assert video.shape == (1, 4, 32, 32, 3) and np.isfinite(video).all()
    assert main(["--workdir", str(workdir), "--out", str(out)]) == 1  # exists: refused
