"""Diffusion-DPO (`mv2_jax.training.dpo`): the stage's loss against a direct PyTorch
transcription of Wallace et al.'s eq. 14 (in their script's form) on a tiny diffusers UNet with
the same weights and inputs; the gradient direction of one step on a fixed pair; the LoRA
reference being the base with the adapter off (no copy in the state or the consts); the config
variants; and a short run of configs/dpo.py that resumes bit-exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import dpo as dpo_configs
from configs.t2i import get_config as t2i_config
from mv2_jax import load_component
from mv2_jax.data.iterators import SkippingBatcher, sharded_elements
from mv2_jax.lora.leaves import SCALE, UP
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training import dpo, losses
from mv2_jax.training.lora import lora_paths
from mv2_jax.training.optim import merge_params, split_params
from mv2_jax.training.stage import key_streams
from mv2_jax.training.trainer import train
from tests.training.conftest import with_overrides

torch = pytest.importorskip("torch")

BETA = 50.0  # inside σ: O(1) for two random tiny UNets (5000 would saturate it)
PAIRS = 3


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def dpo_config(pipeline, **overrides):
    """configs/t2i.py:tiny as a Diffusion-DPO run from `pipeline` (fp32), locked."""
    config = dpo_configs.preference_run(t2i_config("tiny"), beta=BETA)
    config.model.init = {}
    config.model.pipeline = str(pipeline)
    return with_overrides(config, overrides)


def build_stage(config) -> dpo.PreferenceStage:
    return dpo.PreferenceStage.from_config(
        config, Path(config.model.pipeline), make_mesh(config.mesh)
    )


def example_keys(n: int, seed: int = 3) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


# ---------------------------------------------------------------- torch transcription


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    """A tiny diffusers SD pipeline (the reference UNet) and a second UNet of other random
    weights (the policy), each saved as a diffusers folder."""
    from tests.weights.tiny_models import tiny_pipeline, tiny_unet

    root = tmp_path_factory.mktemp("dpo_torch")
    pipe = tiny_pipeline(root / "pipe")
    policy = tiny_unet(seed=7)
    policy.save_pretrained(root / "policy_unet")
    return root / "pipe", pipe, policy


def torch_dpo_loss(policy, reference, scheduler, chosen, rejected, noise, t, context, weight,
                   beta, sft_weight):  # fmt: skip
    """Eq. 14 as the authors' train.py computes it (NCHW tensors): chosen then rejected in one
    batch sharing the noise and the timestep, per-sample MSE as a mean over C, H, W, the
    inside term −β/2 · (model_diff − ref_diff)."""
    latents = torch.cat([chosen, rejected])
    noise = noise.repeat(2, 1, 1, 1)
    t = t.repeat(2)
    context = context.repeat(2, 1, 1)
    noisy = scheduler.add_noise(latents, noise, t)
    with torch.no_grad():
        model_losses = (policy(noisy, t, context).sample - noise).pow(2).mean(dim=[1, 2, 3])
        ref_losses = (reference(noisy, t, context).sample - noise).pow(2).mean(dim=[1, 2, 3])
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    loss = (-weight * torch.nn.functional.logsigmoid(inside)).mean()
    loss = loss + sft_weight * (weight * model_w).mean()
    return loss, inside, model_w, model_l, ref_w, ref_l


def test_loss_matches_a_torch_transcription_of_eq_14(torch_models):
    from diffusers import DDPMScheduler

    folder, pipe, policy_unet = torch_models
    config = dpo_config(folder, **{"dpo.sft_weight": 0.3})
    stage = build_stage(config)
    assert set(flat(stage.consts["reference"])) == set(flat(load_component(folder / "unet")[1]))
    _, policy = load_component(folder.parent / "policy_unet")

    rng = np.random.default_rng(0)
    chosen = rng.standard_normal((PAIRS, 8, 8, 4)).astype(np.float32)
    rejected = rng.standard_normal((PAIRS, 8, 8, 4)).astype(np.float32)
    context = rng.standard_normal((PAIRS, 77, 32)).astype(np.float32)
    weight = np.array([1.0, 0.5, 1.0], np.float32)
    batch = {"chosen_latents": chosen, "rejected_latents": rejected,
             "prompt_embeds": context, "weight": weight}  # fmt: skip
    keys = example_keys(PAIRS)
    loss, metrics = jax.jit(stage.loss)(policy, stage.consts, stage.prepare(batch), keys)

    # The pair's timestep and noise, drawn from the keys as the stage draws them.
    _, _, _, k_time, k_noise = key_streams(keys, 5)
    t = np.asarray(losses.per_example_timesteps(k_time, 1000))
    noise = np.asarray(losses.per_example_noise(k_noise, (8, 8, 4), 0.0))
    assert len(set(t.tolist())) == PAIRS  # three different timesteps

    def nchw(x):
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))

    expected, inside, *mse = torch_dpo_loss(
        policy_unet, pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config),
        nchw(chosen), nchw(rejected), nchw(noise), torch.tensor(t).long(),
        torch.from_numpy(context), torch.from_numpy(weight), BETA, 0.3,
    )  # fmt: skip
    assert 0.05 < np.abs(inside.numpy()).max() < 20  # σ neither flat nor saturated
    assert abs(float(loss) - float(expected)) <= 1e-5
    names = ("mse_policy_chosen", "mse_policy_rejected", "mse_reference_chosen",
             "mse_reference_rejected")  # fmt: skip
    for name, value in zip(names, mse):
        np.testing.assert_allclose(float(metrics[name]), float(value.mean()), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["reward_margin"]), float(inside.mean()), atol=1e-4)
    assert float(metrics["implicit_accuracy"]) == float((inside > 0).float().mean())


def test_pairs_stay_on_their_devices():
    """The pairs' samples side by side: each device's pairs stay on it (no collective), and
    the loss reads chosen and rejected back from that layout."""
    mesh = make_mesh("data:4", jax.devices()[:4])
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    chosen, rejected = np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 2, 3)
    laid_out = jax.jit(dpo.pairs, in_shardings=(rows, rows), out_shardings=rows)
    both = laid_out(chosen, rejected)
    np.testing.assert_array_equal(both[0::2], chosen)
    np.testing.assert_array_equal(both[1::2], rejected)
    hlo = laid_out.lower(chosen, rejected).compile().as_text()
    assert not [op for op in ("all-", "collective-permute") if op in hlo], "latents moved"
    errors = dpo.pairs(jnp.array([0.1, 0.2]), jnp.array([0.5, 0.7]))  # chosen lower: margin > 0
    _, metrics = dpo.diffusion_dpo_loss(errors, errors + 0.1 * jnp.array([1, 0, 1, 0]),
                                        jnp.ones(2), dpo.DpoSettings(100.0, 0.0))  # fmt: skip
    assert float(metrics["implicit_accuracy"]) == 1.0


def test_the_loss_at_the_reference_is_log_2():
    """policy = reference: every margin is 0, so the loss is log 2 per unit weight."""
    errors = jnp.array([0.3, 0.2, 0.5, 0.1])
    loss, metrics = dpo.diffusion_dpo_loss(
        errors, errors, jnp.array([1.0, 0.5]), dpo.DpoSettings(5000.0, 0.0)
    )
    np.testing.assert_allclose(float(loss), 0.75 * np.log(2.0), rtol=1e-6)
    assert float(metrics["implicit_accuracy"]) == 0.0 and float(metrics["reward_margin"]) == 0.0


# ---------------------------------------------------------------- gradient direction


@pytest.mark.parametrize("lora", [False, True])
def test_a_step_lowers_the_chosen_error_and_raises_the_rejected(init_pipeline, lora):
    """From the reference, one gradient step on a fixed pair: the chosen sample's denoising
    error falls below the reference's and the rejected one's rises above it."""
    overrides = {"model.lora.rank": 4} if lora else {}
    stage = build_stage(dpo_config(init_pipeline, **overrides))
    mesh = make_mesh("data:-1")
    params = stage.load_params(stage.param_shardings(mesh, ()))
    if lora:  # the run's trainable subset: the factors (up = 0 at the start)
        trainable, frozen = split_params(params, lora_paths(stage.lora.targets))
    else:
        trainable, frozen = params, {}
    rng = np.random.default_rng(1)
    chosen, rejected = rng.standard_normal((2, 2, 16, 16, 4)).astype(np.float32)
    context = rng.standard_normal((2, 77, 32)).astype(np.float32)
    batch = stage.prepare(
        {"chosen_latents": chosen, "rejected_latents": rejected, "prompt_embeds": context}
    )
    keys = example_keys(2, seed=5)

    def loss_of(t):
        return stage.loss(merge_params(t, frozen), stage.consts, batch, keys)

    (_, before), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(trainable)
    assert float(before["mse_policy_chosen"]) == pytest.approx(
        float(before["mse_reference_chosen"]), rel=1e-6
    )  # the policy starts as the reference (up to the order of float ops)
    norm = float(jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads))))
    assert norm > 0
    stepped = jax.tree.map(lambda p, g: p - 0.02 * g / norm, trainable, grads)
    _, after = jax.jit(loss_of)(stepped)
    chosen_gap = float(after["mse_policy_chosen"] - after["mse_reference_chosen"])
    rejected_gap = float(after["mse_policy_rejected"] - after["mse_reference_rejected"])
    assert chosen_gap < 0 < rejected_gap, (chosen_gap, rejected_gap)
    assert float(after["implicit_accuracy"]) == 1.0 and float(after["reward_margin"]) > 0
    np.testing.assert_array_equal(after["mse_reference_chosen"], before["mse_reference_chosen"])


# ---------------------------------------------------------------- the LoRA reference


def test_lora_reference_is_the_base_with_the_adapter_off(init_pipeline):
    stage = build_stage(dpo_config(init_pipeline, **{"model.lora.rank": 4}))
    assert "reference" not in stage.consts  # no second copy of the UNet
    mesh = make_mesh("data:-1")
    params = stage.load_params(stage.param_shardings(mesh, ()))
    rng = np.random.default_rng(2)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.asarray(rng.standard_normal(x.shape), x.dtype) * 0.1
            if getattr(path[-1], "key", "") == UP
            else x
        ),
        params,
    )  # a non-zero adapter
    policy, reference = stage.policy_and_reference(params, stage.consts)
    base = flat(load_component(init_pipeline / "unet")[1])
    assert flat(reference).keys() == base.keys()
    for name, value in flat(reference).items():
        np.testing.assert_array_equal(value, base[name], err_msg=name)
    # the adapter is on: non-zero factors beside the Dense kernels, which the layers add
    # (tests/training/test_lora_side_path.py: the same model as the fused kernels)
    on = flat(policy)
    assert any(n.endswith(UP) and np.abs(v).max() > 0 for n, v in on.items())
    assert any(n.endswith(SCALE) for n in on)


# ---------------------------------------------------------------- configs and a resumed run


@pytest.mark.parametrize("variant", dpo_configs.VARIANTS)
def test_config_variants(variant):
    config = dpo_configs.get_config(variant)
    assert config.stage in dpo.DPO_STAGES and config.dpo.beta > 0
    assert config.diffusion.min_snr_gamma == 0 and not config.data.image_dir
    dpo.dpo_settings(config)


def square_pairs(num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """In-test pairs `[N, 32, 32, 3]` in [-1, 1]: the chosen image a bright red square on
    dark grey, the rejected one the same square dimmed."""
    rng = np.random.default_rng(seed)
    chosen = np.full((num_pairs, 32, 32, 3), -0.8, np.float32)
    for i, (y, x) in enumerate(rng.integers(0, 20, (num_pairs, 2))):
        chosen[i, y : y + 12, x : x + 12] = (0.9, -0.6, -0.6)
    return chosen, chosen * 0.4


def pair_iterator(num_pairs: int, batch_size: int, seed: int):
    """An endless, checkpointable iterator of in-test pairs in the preference batch contract
    (`mv2_jax.data.preference_pipeline`), without a dataset on disk."""
    chosen, rejected = square_pairs(num_pairs, seed)

    def load(item):
        position, index = item
        return {"chosen": chosen[index], "rejected": rejected[index], "prompt": "a red square",
                "weight": np.float32(1.0), "position": position}  # fmt: skip

    elements = sharded_elements(num_pairs, load, seed=seed, process_index=0, process_count=1,
                                read_threads=0, prefetch_elements=0, num_workers=0)  # fmt: skip
    return SkippingBatcher(iter(elements), batch_size, is_image=True)


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    """The same pairs as PNG files → `build_preference_dataset` (a JSONL of pairs)."""
    from PIL import Image

    from mv2_jax.data.preferences import build_preference_dataset

    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i, pair in enumerate(zip(*square_pairs(12, 0))):
        names = [f"{i}_{side}.png" for side in dpo.SIDES]
        for name, image in zip(names, pair):
            Image.fromarray(np.round((image + 1) * 127.5).astype(np.uint8)).save(root / name)
        rows.append(json.dumps({"prompt": "a red square", "chosen": names[0],
                                "rejected": names[1]}))  # fmt: skip
    (root / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    build_preference_dataset(root / "data", pairs=root / "pairs.jsonl")
    return root / "data"


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False])
def test_a_dpo_run_resumes_bit_exactly(init_pipeline, preference_data, monkeypatch, tmp_path,
                                       lora):  # fmt: skip
    """configs/dpo.py:shapes_t2i on the tiny model, 4 steps, and again from the step-2
    checkpoint: bit-identical. The LoRA run reads a built preference dataset
    (`data.preference_dir`), the full one in-memory pairs; the metrics carry the DPO terms and
    the state holds the policy alone."""
    config = dpo_configs.get_config("shapes_t2i")
    config.model.pipeline = str(init_pipeline)
    config.model.lora.rank = 4 if lora else 0
    config.data.height = config.data.width = 32
    if lora:
        config.data.preference_dir = str(preference_data)
    else:
        monkeypatch.setattr(dpo.PreferenceStage, "make_data_iterator",
                            lambda _, c: pair_iterator(12, c.batch_size, 0))  # fmt: skip
    overrides = {"batch_size": 4, "total_steps": 4, "checkpoint_every": 2, "log_every": 2,
                 "warmup_steps": 1, "lr": 1e-3, "compute_dtype": "float32"}  # fmt: skip
    config = with_overrides(config, overrides)
    state = train(config, tmp_path / "run")
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    again = train(config, resumed)
    assert int(again.step) == 4
    for a, b in ((again.params, state.params), (again.opt_state, state.opt_state)):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"implicit_accuracy", "reward_margin", "mse_reference_rejected"} <= set(last)
    base = flat(load_component(init_pipeline / "unet")[1])
    extra = set(flat(state.params)) - set(base)
    assert all(n.endswith(("lora_down", "lora_up")) for n in extra) and bool(extra) == lora


@pytest.mark.slow
def test_the_shipped_i2v_starts_as_its_own_reference():
    """configs/dpo.py:shapes_i2v: the motion LoRA on the shipped I2V starts from its trained
    appearance encoder and ControlNet (not fresh copies of the UNet), and at step 0 the policy
    is the reference: every margin 0, the loss log 2."""
    config = dpo_configs.get_config("shapes_i2v")
    config.lock()
    stage = build_stage(config)
    mesh = make_mesh(config.mesh)
    params = stage.load_params(stage.param_shardings(mesh, tuple(config.sharding_rules)))
    shipped = Path(config.model.pipeline)
    for part, folder in (("appearance", "appearance_encoder"), ("controlnet", "controlnet")):
        expected = flat(load_component(shipped / folder)[1])
        got = flat(params[part])
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{part}/{name}")
    rng = np.random.default_rng(3)
    chosen, rejected = rng.standard_normal((2, 1, 8, 16, 16, 4)).astype(np.float32)
    batch = stage.prepare({"chosen_latents": chosen, "rejected_latents": rejected,
                           "prompt": ["a red circle moving right"]})  # fmt: skip
    loss, metrics = jax.jit(stage.loss)(params, stage.consts, batch, example_keys(1))
    np.testing.assert_allclose(float(loss), np.log(2.0), atol=1e-4)
    assert float(metrics["mse_policy_chosen"]) == pytest.approx(
        float(metrics["mse_reference_chosen"]), rel=1e-5
    )


@pytest.mark.slow
def test_precomputed_pairs_train(init_pipeline, preference_data, tmp_path):
    """`train.py --precompute_to` on a DPO config encodes the pairs once (both latents, the
    prompt's embeddings, the weight); a run on `data.precomputed_dir` then trains from them."""
    from mv2_jax.data.builders import open_dataset
    from mv2_jax.training.precompute import precompute

    def config_with(**data):
        config = dpo_configs.get_config("shapes_t2i")
        config.model.pipeline = str(init_pipeline)
        config.model.lora.rank = 4
        config.data.height = config.data.width = 32
        for key, value in data.items():
            config.data[key] = value
        return with_overrides(config, {"batch_size": 4, "total_steps": 2, "log_every": 1,
                                       "warmup_steps": 0, "compute_dtype": "float32"})  # fmt: skip

    out = precompute(
        config_with(preference_dir=str(preference_data)), tmp_path / "w", tmp_path / "pre", 8
    )
    source, _ = open_dataset(out.parents[1], "precomputed", "")
    record = source[0]
    assert record["chosen_latents"].shape == record["rejected_latents"].shape == (16, 16, 4)
    assert record["prompt_embeds"].shape == (77, 32) and float(record["weight"]) == 1.0
    assert not np.array_equal(record["chosen_latents"], record["rejected_latents"])
    state = train(config_with(precomputed_dir=str(out.parents[1])), tmp_path / "run")
    assert int(state.step) == 2
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["implicit_accuracy"] >= 0 and np.isfinite(last["loss"])
