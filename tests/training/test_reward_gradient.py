"""Reward-gradient tuning (`mv2_jax.training.reward_gradient`, configs/reward.py:*_draft): the
truncated sampler gives `denoise`'s result with gradient only through the last K steps (exactly
zero before them, non-zero inside), and a few steps of a LoRA on configs/t2i.py:tiny's UNet
raise a differentiable pixel reward (mean brightness) while only the LoRA factors change."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.reward import get_config
from configs.shapes import SCHEDULER
from mv2_jax.diffusion.sampler import (
    denoise,
    denoise_with_last_steps_differentiable,
    steps_bucket,
)
from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.lora.leaves import DOWN, UP
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training.reward_gradient import RewardGradientStage
from mv2_jax.training.stage_contract import check_stage_class
from mv2_jax.training.step import example_keys
from mv2_jax.training.trainer import run_stage_class, train
from tests.training.conftest import with_overrides

STEPS = 6


def toy_sampling(scheduler_name: str):
    """A DDIM/DPM++ loop over a toy denoiser `x·w + bias[step]`, whose per-step `bias` is the
    perturbation the gradient is taken with respect to."""
    scheduler = make_scheduler(dict(SCHEDULER), scheduler_name)
    tables = {k: jnp.asarray(v) for k, v in scheduler.tables(STEPS, steps_bucket(STEPS)).items()}
    n = int(tables["num_steps"])
    timesteps = tables["timesteps"][:n]

    def model_fn(params, x, t):
        step = jnp.argmin(jnp.abs(timesteps - t))
        return x * params["w"] + params["bias"][step]

    params = {"w": jnp.float32(0.3), "bias": jnp.zeros((n, 2, 4, 4, 1))}
    latents = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    return scheduler, tables, model_fn, params, latents, n


@pytest.mark.parametrize("scheduler_name", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_only_the_last_k_steps_get_gradient(k, scheduler_name):
    scheduler, tables, model_fn, params, latents, n = toy_sampling(scheduler_name)
    key = jax.random.key(1)

    def reward(p):
        out = denoise_with_last_steps_differentiable(
            scheduler, tables, model_fn, p, latents, key, k
        )
        return jnp.sum(out**2 + out)

    grads = jax.jit(jax.grad(reward))(params)
    per_step = np.abs(np.asarray(grads["bias"])).reshape(n, -1).max(axis=1)
    assert (per_step[: n - k] == 0).all(), per_step  # exactly: never differentiated
    assert (per_step[n - k :] > 1e-3).all(), per_step
    # the sample itself is `denoise`'s, to the bit
    plain = denoise(scheduler, tables, lambda x, t: model_fn(params, x, t), latents, key)
    truncated = denoise_with_last_steps_differentiable(
        scheduler, tables, model_fn, params, latents, key, k
    )
    np.testing.assert_array_equal(truncated, plain)


def test_k_must_be_positive():
    scheduler, tables, model_fn, params, latents, _ = toy_sampling("ddim")
    with pytest.raises(ValueError, match="grad_steps"):
        denoise_with_last_steps_differentiable(
            scheduler, tables, model_fn, params, latents, jax.random.key(0), 0
        )


def test_the_stage_has_the_trainer_contract():
    check_stage_class(RewardGradientStage, "reward_gradient")


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def initial_params(stage, mesh) -> dict:
    """The params the run started from (the base and its fresh factors), replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return stage.load_params(jax.tree.map(lambda _: replicated, stage.param_shapes()))


@pytest.fixture(scope="module")
def draft_run(init_pipeline, image_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("draft")
    overrides = {"model.pipeline": str(init_pipeline), "data.image_dir": str(image_data)}
    config = with_overrides(get_config("tiny_t2i_draft"), overrides)
    return config, train(config, workdir), workdir


@pytest.mark.slow
def test_a_few_reward_gradient_steps_raise_the_reward(draft_run, init_pipeline):
    config, state, _ = draft_run
    mesh = make_mesh("data:-1")
    stage = run_stage_class(config).from_config(config, init_pipeline, mesh)
    batch = stage.prepare(next(stage.make_data_iterator(config)))
    keys = example_keys(state.rng, jnp.int32(1000), jnp.arange(config.batch_size))
    loss = jax.jit(stage.loss)
    before = float(loss(initial_params(stage, mesh), stage.consts, batch, keys)[1]["reward"])
    after = float(loss(state.params, stage.consts, batch, keys)[1]["reward"])
    assert after > before + 0.01, (before, after)


@pytest.mark.slow
def test_only_the_lora_factors_change(draft_run, init_pipeline):
    config, state, _ = draft_run
    mesh = make_mesh("data:-1")
    stage = run_stage_class(config).from_config(config, init_pipeline, mesh)
    start, end = flat(initial_params(stage, mesh)), flat(state.params)
    assert set(start) == set(end)
    factors = {n for n in end if n.endswith(f"/{DOWN}") or n.endswith(f"/{UP}")}
    assert factors and len(factors) < len(end)
    for name in set(end) - factors:
        np.testing.assert_array_equal(end[name], start[name], err_msg=name)
    changed = [n for n in factors if n.endswith(UP) and np.abs(end[n] - start[n]).max() > 0]
    assert len(changed) == len(factors) // 2  # every up factor left its 0


@pytest.mark.slow
def test_the_tuned_lora_exports_for_the_pipelines(draft_run, init_pipeline, tmp_path):
    """`export --lora-only` of a reward-gradient run writes the tuned stage's (t2i) LoRA as a
    diffusers file; a pipeline loads it and holds the run's fused UNet."""
    from mv2_jax import load_pipeline
    from mv2_jax.lora.leaves import fuse_lora_leaves
    from mv2_jax.training.lora import lora_settings
    from mv2_jax.training.lora_export import export_lora

    config, state, workdir = draft_run
    out = export_lora(workdir, tmp_path / "lora", ema=False)
    pipe = load_pipeline(init_pipeline)
    pipe.load_lora_weights(out)
    expected = flat(fuse_lora_leaves(state.params, lora_settings(config).multiplier))
    loaded = flat(pipe.unet_params)
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(loaded[name], value, rtol=0, atol=2e-7, err_msg=name)


@pytest.mark.slow
def test_the_i2v_path_samples_clips_and_reaches_the_motion_lora(init_pipeline, tmp_path):
    """configs/reward.py:tiny_i2v_draft on the tiny motion UNet: a random window of 2 decoded
    frames (VADER), the key image from the clip, and a gradient on the motion modules' LoRA."""
    from configs.i2v import tiny_model
    from mv2_jax.training.random_pipeline import write_random_pipeline

    folder = write_random_pipeline(tiny_model(), tmp_path / "i2v", seed=0)
    config = with_overrides(
        get_config("tiny_i2v_draft"),
        {"model.pipeline": str(folder), "reward_gradient.decode_frames": 2},
    )
    mesh = make_mesh("data:-1")
    stage = run_stage_class(config).from_config(config, folder, mesh)
    params = initial_params(stage, mesh)
    clips = np.random.default_rng(0).uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)
    batch = stage.prepare({"pixels": clips, "caption": np.array(["a red square", "a dot"])})
    keys = example_keys(jax.random.key_data(jax.random.key(0)), jnp.int32(0), jnp.arange(2))
    factors = {k: v for k, v in flat(params).items() if k.endswith(f"/{UP}")}
    assert factors and all("motion_modules_" in k for k in factors)

    def loss_of(p):
        return stage.loss(p, stage.consts, batch, keys)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(params)
    assert np.isfinite(float(loss)) and 0 < float(metrics["reward"]) < 1
    up_grads = [np.abs(v).max() for k, v in flat(grads).items() if k.endswith(f"/{UP}")]
    assert len(up_grads) == len(factors) and max(up_grads) > 0
