"""LoRA training (`config.model.lora`) on configs/t2i.py:tiny through `train(config, workdir)`:
only the factors change (the base stays bit-identical) and only they are in the optimizer state
and the EMA, step 0 is the base model's loss (fp32 and bf16 base), a LoRA overfits one batch,
resume is bit-exact, and `export --lora-only` writes a file that mv2-jax's `read_lora` /
`load_lora_weights` and diffusers' `load_lora_weights` read to the same UNet."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs.t2i import LORA_TARGETS
from mv2_jax import load_component
from mv2_jax.lora import bind_lora, merge_lora, read_lora
from mv2_jax.lora.leaves import DOWN, UP, fuse_lora_leaves, lora_leaves, lora_targets
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training import restore_params
from mv2_jax.training.export import main as export_main
from mv2_jax.training.lora import LoraStage, lora_paths
from mv2_jax.training.optim import merge_params, split_params
from mv2_jax.training.stage_contract import check_stage_class
from mv2_jax.training.trainer import train
from tests.training.conftest import tiny_config

STEPS = 6
LORA = {"model.lora.rank": 4, "model.lora.alpha": 8.0}
RUN = {"total_steps": STEPS, "checkpoint_every": 3, "lr": 1e-2, "warmup_steps": 1}


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def run(init_pipeline, image_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora_run")
    config = tiny_config(init_pipeline, image_data, lr_schedule="constant", **RUN, **LORA)
    return workdir, config, train(config, workdir)


def test_only_the_lora_factors_train(run, init_pipeline):
    _, _, state = run
    _, base = load_component(init_pipeline / "unet")
    modules = lora_targets(base, LORA_TARGETS)
    assert len(modules) == 4 * 2 * 4  # q, k, v, out of attn1 and attn2 in 4 transformer blocks
    factors = {"/".join(p) for p in lora_paths(modules)}
    params = flat(state.params)
    assert set(params) == set(flat(base)) | factors
    for name, value in flat(base).items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)  # frozen: bit-identical
    assert all(np.abs(params[n]).max() > 0 for n in factors if n.endswith(UP))  # up left 0
    assert set(flat(state.ema)) == factors
    moments = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, dict))
               if isinstance(s, dict)]  # fmt: skip
    assert moments and all(set(flat(m)) == factors for m in moments)  # Adam's mu and nu


@pytest.mark.parametrize("base_dtype", ["", "bfloat16"])
def test_step_0_is_the_base_model(init_pipeline, image_data, base_dtype):
    config = tiny_config(init_pipeline, image_data, **LORA, **{"model.lora.base_dtype": base_dtype})
    check_stage_class(LoraStage, "t2i+lora")
    mesh = make_mesh(config.mesh)
    stage = LoraStage.from_config(config, init_pipeline, mesh)
    params = stage.load_params(stage.param_shardings(mesh, tuple(config.sharding_rules)))
    factors, base = split_params(params, lora_paths(stage.targets))
    expected = jnp.bfloat16 if base_dtype else jnp.float32
    assert {v.dtype for v in jax.tree.leaves(base)} == {jnp.dtype(expected)}
    assert {v.dtype for v in jax.tree.leaves(factors)} == {jnp.dtype(jnp.float32)}
    batch = stage.prepare(next(stage.make_data_iterator(config)))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(8))
    lora_loss = jax.jit(lambda p: stage.loss(p, stage.consts, batch, keys)[0])(params)
    base_loss = jax.jit(lambda p: stage.inner.loss(p, stage.consts, batch, keys)[0])(base)
    assert float(lora_loss) == float(base_loss)


def test_a_lora_overfits_one_batch(init_pipeline, image_data):
    """Fixed noise and timesteps: the factors alone drive the loss of one batch down."""
    config = tiny_config(init_pipeline, image_data, **LORA)
    mesh = make_mesh(config.mesh)
    stage = LoraStage.from_config(config, init_pipeline, mesh)
    params = stage.load_params(stage.param_shardings(mesh, tuple(config.sharding_rules)))
    factors, base = split_params(params, lora_paths(stage.targets))
    batch = {k: v[:2] for k, v in stage.prepare(next(stage.make_data_iterator(config))).items()}
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(jnp.arange(2))
    optimizer = optax.adam(2e-2)

    @jax.jit
    def step(factors, opt_state):
        def loss(f):
            return stage.loss(merge_params(f, base), stage.consts, batch, keys)[0]

        value, grads = jax.value_and_grad(loss)(factors)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(factors, updates), opt_state, value

    opt_state, losses = optimizer.init(factors), []
    for _ in range(25):
        factors, opt_state, value = step(factors, opt_state)
        losses.append(float(value))
    assert losses[-1] < 0.5 * losses[0], losses


def test_resume_is_bit_exact(run, tmp_path):
    """From the step-3 checkpoint, a resumed run ends where the uninterrupted one did."""
    workdir, config, state = run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))
    again = train(config, resumed)
    assert int(again.step) == STEPS
    for a, b in ((again.params, state.params), (again.opt_state, state.opt_state)):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, again.ema, state.ema)


def test_a_bf16_base_trains(init_pipeline, image_data, tmp_path):
    config = tiny_config(
        init_pipeline, image_data, **{**RUN, "total_steps": 2}, **LORA,
        **{"model.lora.base_dtype": "bfloat16"},
    )  # fmt: skip
    state = train(config, tmp_path)
    factors = lora_leaves(state.params)
    base = {n: v for n, v in flat(state.params).items() if not n.endswith((DOWN, UP))}
    _, initial = load_component(init_pipeline / "unet", jnp.bfloat16)
    for name, value in flat(initial).items():
        assert base[name].dtype == jnp.bfloat16
        np.testing.assert_array_equal(base[name], value, err_msg=name)
    assert all(up.dtype == jnp.float32 and np.abs(up).max() > 0 for _, up in factors.values())


def test_export_reads_back_to_the_fused_params(run, init_pipeline, tmp_path):
    """`--lora-only` → read_lora + merge_lora, and a pipeline's `load_lora_weights`, give the
    UNet the run trained (its factors fused); the full export holds the same UNet."""
    from mv2_jax import load_pipeline
    from mv2_jax.training.export import export_pipeline

    workdir, _, state = run
    assert export_main(["--workdir", str(workdir), "--out", str(tmp_path / "l"), "--lora-only",
                        "--no-ema"]) == 0  # fmt: skip
    expected = flat(fuse_lora_leaves(state.params, 8.0 / 4))
    adapter = read_lora(tmp_path / "l")
    assert adapter.format == "diffusers"
    assert {w.multiplier for w in adapter.modules("unet").values()} == {2.0}
    module, base = load_component(init_pipeline / "unet")
    fused = flat(merge_lora(base, [(bind_lora(adapter, "unet", module, base), 1.0)]))
    pipe = load_pipeline(init_pipeline)
    pipe.load_lora_weights(tmp_path / "l")
    exported = load_pipeline(export_pipeline(workdir, tmp_path / "sd", ema=False))
    for params in (fused, flat(pipe.unet_params), flat(exported.unet_params)):
        assert params.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(params[name], value, rtol=0, atol=2e-7, err_msg=name)


def test_diffusers_reads_the_export(image_data, tmp_path):
    """A LoRA trained on a diffusers pipeline's UNet, exported, loaded by diffusers'
    `load_lora_weights`: its UNet's output matches mv2-jax's fused UNet (≤ 1e-4 relative)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    diffusers = pytest.importorskip("diffusers")
    from tests.lora import tiny
    from tests.reference import nchw_to_nhwc, relative_error
    from tests.weights.tiny_models import tiny_pipeline

    folder = tmp_path / "sd"
    tiny_pipeline(folder)
    config = tiny_config(folder, image_data, **{**RUN, "total_steps": 2}, **LORA)
    train(config, tmp_path / "run")
    assert export_main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "l"),
                        "--lora-only"]) == 0  # fmt: skip
    lora_file = tmp_path / "l" / "pytorch_lora_weights.safetensors"
    reference = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    reference = tiny.diffusers_fused(reference, [(lora_file, 1.0)])
    module, _ = load_component(folder / "unet")
    params = fuse_lora_leaves(restore_params(tmp_path / "run", ema=True), 8.0 / 4)
    rng = np.random.default_rng(0)
    channels, size = reference.config.in_channels, reference.config.sample_size
    sample = rng.standard_normal((2, channels, size, size), np.float32)
    t = np.array([3.0, 741.0], np.float32)
    context = rng.standard_normal((2, 7, reference.config.cross_attention_dim), np.float32)
    with torch.no_grad():
        expected = reference(*(torch.from_numpy(x) for x in (sample, t, context))).sample
    actual = module.apply({"params": params}, sample.transpose(0, 2, 3, 1), t, context)
    base = module.apply({"params": load_component(folder / "unet")[1]},
                        sample.transpose(0, 2, 3, 1), t, context)  # fmt: skip
    expected = nchw_to_nhwc(expected.numpy())
    assert relative_error(base, expected) > 1e-4  # the LoRA changes the output
    assert relative_error(actual, expected) <= 1e-4


def test_a_motion_lora_targets_the_motion_modules_and_exports_their_names(video_data, tmp_path):
    """i2v: the default targets are the motion modules' attention projections alone; their
    factors, written with diffusers' UNetMotionModel names, bind back to the same params."""
    from configs.i2v import get_config, tiny_model
    from mv2_jax.lora import parse_lora, resolve_lora
    from mv2_jax.training.lora import lora_settings
    from mv2_jax.training.lora_export import diffusers_lora_state
    from mv2_jax.training.random_pipeline import write_random_pipeline
    from mv2_jax.weights.motion import MOTION
    from tests.training.conftest import with_overrides

    pipeline = write_random_pipeline(tiny_model(), tmp_path / "i2v", seed=0)
    overrides = {"model.pipeline": str(pipeline), "data.video_dir": str(video_data), **LORA}
    config = with_overrides(get_config("tiny"), overrides)
    stage = LoraStage.from_config(config, pipeline, make_mesh(config.mesh))
    names = ["/".join(m) for m in stage.targets]
    assert names and all(n.startswith("unet/") and "/motion_modules_" in n for n in names)
    assert len(names) == 4 * 2 * 7  # q, k, v, out of attn1 and attn2 in 7 motion modules
    shapes = stage.param_shapes()
    rng = np.random.default_rng(0)
    unet = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes["unet"])
    state, metadata = diffusers_lora_state(unet, lora_settings(config), "UNetMotionModel")
    assert (
        "unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in state
    )
    base = {k: v for k, v in flat(unet).items() if not k.endswith((DOWN, UP))}
    base = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in base.items()})
    bound = resolve_lora(parse_lora(state, metadata), "unet", base, MOTION.rules)
    assert {"/".join(p[:-1]) for p in bound.updates} == {n.removeprefix("unet/") for n in names}
    fused, expected = flat(merge_lora(base, [(bound, 1.0)])), flat(fuse_lora_leaves(unet, 2.0))
    for name, value in expected.items():
        np.testing.assert_allclose(fused[name], value, rtol=1e-6, atol=1e-5, err_msg=name)
