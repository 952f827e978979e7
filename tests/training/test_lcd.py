"""Consistency distillation (`mv2_jax.training.lcd`, configs/lcd.py): the stage's loss against a
NumPy transcription of the LCM objective written here from the paper (same weights and inputs,
fp32; T2I ε-prediction, I2V v-prediction with its appearance encoder and ControlNet); a few
steps lower the loss on a fixed batch; bad config values; a short run that resumes bit-exactly
and whose LoRA exports and samples with the LCM scheduler at guidance 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import lcd as lcd_configs
from mv2_jax.lora.leaves import DOWN, UP, fuse_lora_leaves
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training.lcd import ConsistencyDistillationStage, lcd_settings
from mv2_jax.training.lora import lora_paths
from mv2_jax.training.optim import merge_params, split_params
from mv2_jax.training.stage import key_streams
from mv2_jax.training.stage_contract import check_stage_class
from mv2_jax.training.step import EMA_CONST
from mv2_jax.training.trainer import run_stage_class, train
from tests.training.conftest import with_overrides

BATCH = 3


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def i2v_pipeline(tmp_path_factory):
    from configs.i2v import tiny_model
    from mv2_jax.training.random_pipeline import write_random_pipeline

    return write_random_pipeline(tiny_model(), tmp_path_factory.mktemp("lcd_i2v") / "pipe", 0)


def lcd_config(variant: str, pipeline, **overrides):
    return lcd_config_of(lcd_configs.get_config(variant), pipeline, **overrides)


def lcd_config_of(config, pipeline, **overrides):
    """`config` starting from the `pipeline` folder, with `overrides`, locked."""
    config.model.init = {}
    config.model.pipeline = str(pipeline)
    return with_overrides(config, overrides)


def build(config) -> ConsistencyDistillationStage:
    stage = run_stage_class(config).from_config(
        config, Path(config.model.pipeline), make_mesh(config.mesh)
    )
    assert isinstance(stage, ConsistencyDistillationStage)
    return stage


def example_keys(n: int, seed: int = 3) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


def perturbed(tree, seed: int, scale: float) -> dict:
    """`tree` with every LoRA factor replaced by Gaussian values (a non-zero adapter)."""
    rng = np.random.default_rng(seed)

    def one(path, x):
        if getattr(path[-1], "key", "") in (DOWN, UP):
            return jnp.asarray(rng.standard_normal(x.shape) * scale, x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(one, tree)


def start_params(stage) -> tuple[dict, dict]:
    """(params with a non-zero adapter, an EMA of the factors that differs from them)."""
    params = stage.load_params(stage.param_shardings(make_mesh("data:-1"), ()))
    params = perturbed(params, 1, 0.05)
    factors, _ = split_params(params, lora_paths(stage.lora.targets))
    return params, perturbed(factors, 2, 0.05)


# ---------------------------------------------------------------- the NumPy transcription


def scaled_linear_alphas_cumprod(scheduler: dict) -> np.ndarray:
    """ᾱ of the pipeline's scheduler config (scaled_linear betas, no zero-SNR rescale)."""
    assert scheduler["beta_schedule"] == "scaled_linear"
    assert not scheduler.get("rescale_betas_zero_snr")
    betas = np.linspace(
        scheduler["beta_start"] ** 0.5, scheduler["beta_end"] ** 0.5,
        scheduler["num_train_timesteps"], dtype=np.float64,
    ) ** 2  # fmt: skip
    return np.cumprod(1.0 - betas)


def lcm_loss_numpy(student, teacher_cond, teacher_uncond, target, z, noise, n, w, *,
                   alphas_cumprod, num_ddim, skip, huber_c, prediction):  # fmt: skip
    """LCM's Alg. 1 step on one batch, written from the paper with LCM-LoRA's folded guidance:
    x_t at t = grid[n] (grid tₙ = (n+1)·T/N − 1), one guided DDIM step of the teacher to
    s = max(t − k·T/N, 0), the target network's consistency function there, pseudo-Huber."""
    T = len(alphas_cumprod)
    ratio = T // num_ddim
    grid = np.arange(1, num_ddim + 1) * ratio - 1
    t = grid[n]
    s = np.maximum(t - skip * ratio, 0)

    def per(v):
        return v.reshape((-1,) + (1,) * (z.ndim - 1)).astype(np.float32)

    a = lambda u: per(np.sqrt(alphas_cumprod[u]))  # noqa: E731
    sig = lambda u: per(np.sqrt(1.0 - alphas_cumprod[u]))  # noqa: E731

    def x0_eps(out, x, u):
        if prediction == "epsilon":
            x0 = (x - sig(u) * out) / a(u)
            return x0, out
        x0 = a(u) * x - sig(u) * out  # v-prediction
        return x0, a(u) * out + sig(u) * x

    def f(out, x, u):
        scaled = 10.0 * u.astype(np.float64)
        c_skip = per(0.25 / (scaled**2 + 0.25))
        c_out = per(scaled / np.sqrt(scaled**2 + 0.25))
        return c_skip * x + c_out * x0_eps(out, x, u)[0]

    x_t = a(t) * z + sig(t) * noise
    online = f(student(x_t, t), x_t, t)
    uncond, cond = teacher_uncond(x_t, t), teacher_cond(x_t, t)
    guided = uncond + per(w) * (cond - uncond)
    x0, eps = x0_eps(guided, x_t, t)
    x_s = a(s) * x0 + sig(s) * eps
    aim = f(target(x_s, s), x_s, s)
    return np.mean(np.sqrt((online - aim) ** 2 + huber_c**2) - huber_c)


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", ["t2i", "i2v"])
def test_loss_matches_a_numpy_transcription_of_the_lcm_objective(
    stage_name, init_pipeline, i2v_pipeline
):
    """T2I (ε) with the UNet called directly; I2V (v-prediction, appearance encoder and
    ControlNet on) through the I2V stage's own UNet call with the reference read from the
    prompt on both halves; 50-point grid, k = 2 so that s clamps at 0 for low grid points."""
    video = stage_name == "i2v"
    pipeline = i2v_pipeline if video else init_pipeline
    overrides = {"lcd.skip_steps": 2, "lcd.num_ddim_timesteps": 50, "lcd.huber_c": 0.01}
    if video:
        overrides["diffusion.prediction_type"] = "v_prediction"
    config = lcd_config(f"tiny_{stage_name}", pipeline, **overrides)
    stage = build(config)
    params, ema = start_params(stage)
    rng = np.random.default_rng(0)
    shape = (BATCH, 4, 8, 8, 4) if video else (BATCH, 8, 8, 4)
    latents = rng.standard_normal(shape).astype(np.float32)
    prompts = np.array(["a red square", "a blue dot moving", "green"])
    batch = stage.prepare({"latents": latents, "caption": prompts})
    keys = example_keys(BATCH)
    consts = {**stage.consts, EMA_CONST: ema}
    loss, metrics = jax.jit(stage.loss)(params, consts, batch, keys)

    # the draws of the example keys, as the stage's docstring names them
    _, _, k_index, k_noise, k_w, *_ = key_streams(keys, 8)
    n = np.asarray(jax.vmap(lambda k: jax.random.randint(k, (), 0, 50))(k_index))
    w = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32, 1.5, 3.0))(k_w))
    noise = np.asarray(jax.vmap(lambda k: jax.random.normal(jax.random.split(k)[0], shape[1:]))(
        k_noise))  # fmt: skip
    assert len(set(n.tolist())) == BATCH

    model = stage.model
    multiplier = stage.lora.settings.multiplier
    base = split_params(params, lora_paths(stage.lora.targets))[1]
    nets = {"student": fuse_lora_leaves(params, multiplier), "teacher": base,
            "target": fuse_lora_leaves(merge_params(ema, params), multiplier)}  # fmt: skip
    ids = model.token_ids([*prompts, ""])
    encoder, text_params = model.text_encoders[0], stage.consts["text"][0]
    hidden = encoder.apply({"params": text_params}, jnp.asarray(ids[:, 0])).last_hidden_state
    context, empty = hidden[:BATCH], jnp.broadcast_to(hidden[BATCH:], hidden[:BATCH].shape)

    @jax.jit
    def unet(p, x, t, text):
        if video:
            return model.predictor(p, jnp.asarray(latents), text, reference_context=context)(x, t)
        return model.denoiser.apply({"params": p}, x, t, text)

    def network(name, text):
        return lambda x, t: np.asarray(unet(nets[name], x, jnp.asarray(t, jnp.int32), text))

    scheduler = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
    expected = lcm_loss_numpy(
        network("student", context), network("teacher", context), network("teacher", empty),
        network("target", context), latents, noise, n, w,
        alphas_cumprod=scaled_linear_alphas_cumprod(scheduler), num_ddim=50, skip=2,
        huber_c=0.01, prediction=config.diffusion.prediction_type or "epsilon",
    )  # fmt: skip
    assert float(metrics["consistency_mse"]) > 1e-4  # the networks differ: a real test
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.slow
def test_unguided_teacher_has_no_negative_branch(init_pipeline, monkeypatch):
    """w ∈ [1, 1]: the teacher runs on the prompt's half alone (B rows, never 2B)."""
    stage = build(lcd_config("tiny_t2i", init_pipeline, **{
        "lcd.guidance_scale_min": 1.0, "lcd.guidance_scale_max": 1.0}))  # fmt: skip
    rows = []
    apply = type(stage.model.denoiser).apply

    def counting(self, variables, x, *args, **kwargs):
        rows.append(x.shape[0])
        return apply(self, variables, x, *args, **kwargs)

    monkeypatch.setattr(type(stage.model.denoiser), "apply", counting)
    params, ema = start_params(stage)
    batch = stage.prepare({"latents": np.zeros((2, 8, 8, 4), np.float32), "caption": ["a", "b"]})
    stage.loss(params, {**stage.consts, EMA_CONST: ema}, batch, example_keys(2))
    assert rows == [2, 2, 2]  # student, teacher, target


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(init_pipeline):
    stage = build(lcd_config("tiny_t2i", init_pipeline))
    params = stage.load_params(stage.param_shardings(make_mesh("data:-1"), ()))
    trainable, frozen = split_params(params, lora_paths(stage.lora.targets))
    rng = np.random.default_rng(4)
    latents = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    batch = stage.prepare({"latents": latents, "caption": ["a red square"] * 4})
    keys = example_keys(4, seed=7)
    consts = {**stage.consts, EMA_CONST: trainable}  # the target: the starting student

    def loss_of(t):
        return stage.loss(merge_params(t, frozen), consts, batch, keys)[0]

    grad = jax.jit(jax.value_and_grad(loss_of))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(trainable)
    first = None
    for _ in range(12):
        loss, grads = grad(trainable)
        first = float(loss) if first is None else first
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
    last = float(loss_of(trainable))
    assert last < 0.8 * first, (first, last)


BAD = [
    ({"lcd.skip_steps": 0}, "skip_steps"),
    ({"lcd.skip_steps": 50}, "skip_steps"),
    ({"lcd.num_ddim_timesteps": 0}, "num_ddim_timesteps"),
    ({"lcd.guidance_scale_min": 4.0, "lcd.guidance_scale_max": 2.0}, "guidance_scale_min"),
    ({"lcd.loss_type": "l1"}, "loss_type"),
    ({"lcd.huber_c": 0.0}, "huber_c"),
    ({"lcd.timestep_scaling": 0.0}, "timestep_scaling"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"model.lora.rank": 0}, "LoRA student"),
    ({"diffusion.min_snr_gamma": 5.0}, "min_snr_gamma"),
    ({"stage": "vfi"}, "lcd section"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD)
def test_bad_config_values_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        lcd_settings(with_overrides(lcd_configs.get_config("tiny_t2i"), overrides))


def test_too_many_grid_points_for_the_teacher(init_pipeline):
    with pytest.raises(ValueError, match="exceeds the teacher's 1000"):
        build(lcd_config("tiny_t2i", init_pipeline, **{"lcd.num_ddim_timesteps": 2000}))


@pytest.mark.parametrize("variant", lcd_configs.VARIANTS)
def test_config_variants(variant):
    config = lcd_configs.get_config(variant)
    settings = lcd_settings(config)
    assert run_stage_class(config) is ConsistencyDistillationStage
    assert config.model.lora.rank > 0 and config.diffusion.caption_dropout == 0
    if variant == "shapes_v2v":  # the shipped V2V samples unguided: so does its teacher
        assert not settings.guided


def test_the_stage_has_the_trainer_contract():
    check_stage_class(ConsistencyDistillationStage, "lcd")


@pytest.mark.slow
def test_a_run_resumes_bit_exactly_and_its_lora_samples_with_lcm(
    init_pipeline, image_data, tmp_path
):
    """configs/lcd.py:tiny_t2i, 4 steps, and again from the step-2 checkpoint: bit-identical
    params, optimizer state and EMA (the target network); the exported LoRA loads into the
    pipeline and samples with scheduler="lcm" at guidance 1."""
    from mv2_jax import load_pipeline
    from mv2_jax.training.lora_export import export_lora

    config = lcd_config("tiny_t2i", init_pipeline, **{"data.image_dir": str(image_data)})
    state = train(config, tmp_path / "run")
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    again = train(config, resumed)
    assert int(again.step) == 4
    for a, b in ((again.params, state.params), (again.opt_state, state.opt_state),
                 (again.ema, state.ema)):  # fmt: skip
        jax.tree.map(np.testing.assert_array_equal, a, b)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"teacher_gap", "consistency_mse", "guidance_scale"} <= set(last)
    assert np.isfinite(last["loss"]) and last["loss"] > 0

    out = export_lora(tmp_path / "run", tmp_path / "lora")
    pipe = load_pipeline(init_pipeline)
    kwargs = dict(num_inference_steps=2, guidance_scale=1.0, scheduler="lcm", height=16,
                  width=16, seed=0)  # fmt: skip
    base = np.asarray(pipe("a red square", **kwargs))
    pipe.load_lora_weights(out)
    student = np.asarray(pipe("a red square", **kwargs))
    assert student.shape == (1, 16, 16, 3) and np.isfinite(student).all()
    assert student.min() >= 0 and student.max() <= 1
    assert np.abs(student - base).max() > 0  # the LoRA is on


@pytest.mark.slow
def test_the_v2v_student_sees_the_low_res_condition(i2v_pipeline):
    """configs/v2v.py:tiny (the tiny I2V converted on load) as an lcd run: the low-res latents
    and their level reach teacher, student and target, and the motion UNet's LoRA gets a
    gradient."""
    from configs import v2v

    config = lcd_configs.distillation_run(
        v2v.get_config("tiny"), (1.5, 3.0), lcd_configs.VIDEO_TARGETS
    )
    config.model.lora.rank = 4
    config = lcd_config_of(config, i2v_pipeline, **{"data.height": 32, "data.width": 32})
    stage = build(config)
    params, ema = start_params(stage)
    clips = np.random.default_rng(5).uniform(-1, 1, (2, 4, 32, 32, 3)).astype(np.float32)
    batch = stage.prepare({"pixels": clips, "caption": np.array(["a red square", "a dot"])})

    def loss_of(p):
        return stage.loss(p, {**stage.consts, EMA_CONST: ema}, batch, example_keys(2))

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(params)
    assert np.isfinite(float(loss)) and float(metrics["teacher_gap"]) > 0
    up = [np.abs(v).max() for k, v in flat(grads).items() if k.endswith(f"/{UP}")]
    assert up and max(up) > 0
