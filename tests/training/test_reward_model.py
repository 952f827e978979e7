"""The reward model (`mv2_jax.training.reward_model`, configs/reward.py:tiny): the Bradley–Terry
loss against hand-computed values (ties as both orders at weight ½ = BT with target ½), the
held-out split by prompt, the head's motion features (zero spread for even motion), and a run
of the trainer on a separable synthetic task whose held-out pair accuracy leaves chance."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.reward import get_config
from mv2_jax.models.reward_head import motion_features, spatial_soft_argmax
from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.training.reward_model import (
    RewardModelStage,
    bradley_terry_loss,
    heldout_mask,
    synthetic_pair_iterator,
)
from mv2_jax.training.stage_contract import check_stage_class
from mv2_jax.training.trainer import train
from tests.training.conftest import with_overrides


def test_bradley_terry_loss_matches_hand_computed_values():
    chosen = jnp.array([2.0, 0.0, -1.0, 3.0])
    rejected = jnp.array([1.0, 0.5, -1.0, -2.0])
    weight = jnp.array([1.0, 1.0, 0.5, 0.0])
    per_pair, margin = bradley_terry_loss(chosen, rejected, weight)
    # −log σ(d) = log(1 + e^(−d)): d = 1, −0.5, 0 (× ½), 5 (× 0)
    expected = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5)), 0.5 * math.log(2.0), 0.0]
    np.testing.assert_allclose(per_pair, expected, rtol=1e-6)
    np.testing.assert_allclose(per_pair[:2], [0.31326169, 0.97407698], rtol=1e-6)
    np.testing.assert_array_equal(margin, [1.0, -0.5, 0.0, 5.0])
    # a far-apart pair stays finite (softplus, not log of a sigmoid that underflows)
    far, _ = bradley_terry_loss(jnp.array([-200.0]), jnp.array([200.0]), jnp.array([1.0]))
    np.testing.assert_allclose(far, [400.0])


def test_a_tie_as_both_orders_at_half_weight_is_minimal_at_equal_rewards():
    def tie_loss(d):  # the pair (a, b) and (b, a), each at weight ½
        a, b = jnp.array([d]), jnp.array([0.0])
        half = jnp.array([0.5])
        return jnp.sum(bradley_terry_loss(a, b, half)[0] + bradley_terry_loss(b, a, half)[0])

    assert float(jax.grad(tie_loss)(0.0)) == 0.0
    assert float(jax.grad(tie_loss)(1.0)) > 0 > float(jax.grad(tie_loss)(-1.0))
    np.testing.assert_allclose(tie_loss(0.0), math.log(2.0), rtol=1e-6)


def test_heldout_split_is_by_prompt_and_about_the_fraction():
    ids = np.random.default_rng(0).integers(0, 100, (4000, 77)).astype(np.int32)
    mask = heldout_mask(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    np.testing.assert_array_equal(heldout_mask(ids[:10], 0.2), mask[:10])  # same prompt, same side
    repeated = np.repeat(ids[:50], 3, axis=0)
    assert (heldout_mask(repeated, 0.2).reshape(50, 3).std(axis=1) == 0).all()
    assert not heldout_mask(ids, 0.0).any()
    texts = np.array([f"prompt {i}".encode() for i in range(2000)], dtype=object)
    assert 0.17 < heldout_mask(texts, 0.2).mean() < 0.23
    np.testing.assert_array_equal(heldout_mask(texts[:7], 0.2), heldout_mask(texts, 0.2)[:7])


def test_soft_argmax_and_motion_features():
    maps = jnp.full((1, 9, 9, 1), -30.0).at[0, 2, 6, 0].set(30.0)
    np.testing.assert_allclose(spatial_soft_argmax(maps)[0, 0], [-0.5, 0.5], atol=1e-5)
    steps = jnp.array([0.0, 0.1, 0.2, 0.3, 0.4])  # even: the same step each frame
    uneven = jnp.array([0.0, 0.02, 0.2, 0.22, 0.4])  # same start and end, stuttering
    even_points = jnp.stack([steps, steps], -1)[None, :, None]  # [1, 5, 1, 2]
    uneven_points = jnp.stack([uneven, uneven], -1)[None, :, None]
    speed, spread, accel = motion_features(even_points)[0]
    np.testing.assert_allclose(speed, 0.1 * math.sqrt(2), rtol=1e-3)
    assert abs(float(spread)) < 1e-5 and float(accel) < 1e-2
    _, spread_uneven, accel_uneven = motion_features(uneven_points)[0]
    assert float(spread_uneven) > 0.05 and float(accel_uneven) > 0.1
    np.testing.assert_array_equal(motion_features(jnp.zeros((2, 1, 3, 2))), np.zeros((2, 9)))


@pytest.fixture(scope="module")
def run(init_pipeline, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reward_model")
    config = with_overrides(get_config("tiny"), {"model.pipeline": str(init_pipeline)})
    return workdir, config, train(config, workdir)


def test_the_stage_has_the_trainer_contract():
    check_stage_class(RewardModelStage, "reward_model")


@pytest.mark.slow
def test_heldout_accuracy_rises_above_chance(run, init_pipeline):
    workdir, config, state = run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-1] == config.total_steps
    assert rows[-1]["loss"] < math.log(2.0) - 0.1  # below chance's BT loss
    assert sum(r["heldout_pairs"] for r in rows) > 0
    # every held-out pair of the run's stream, scored by the final head
    stage = RewardModelStage.from_config(config, init_pipeline, make_mesh("data:-1"))
    iterator = synthetic_pair_iterator(config, stage.tokenizers[0].model_max_length)
    batches = [stage.prepare(next(iterator)) for _ in range(8)]
    heldout = [dict(b, weight=b["weight"] * b["heldout"]) for b in batches]  # weight 0: skipped
    before = stage.evaluate_pairs(stage.load_params(), heldout)
    after = stage.evaluate_pairs(state.params, heldout)
    assert after["pairs"] >= 15
    assert after["accuracy"] >= 0.8, (before, after)
    assert after["reward_margin"] > before["reward_margin"]
    logged = [r["heldout_accuracy"] for r in rows if r["heldout_pairs"] > 0]
    assert np.mean(logged[-3:]) > 0.7  # the figure the run logs says the same


@pytest.mark.slow
def test_the_trained_model_is_a_differentiable_pixel_reward(run, init_pipeline):
    """What reward-gradient tuning reads (`reward_gradient.reward = "model"`): the run's head
    on the VAE latents of pixels, ranking the synthetic pairs and with a pixel gradient."""
    from mv2_jax.training.reward_gradient import reward_of_config

    workdir, config, _ = run
    stage = RewardModelStage.from_config(config, init_pipeline, make_mesh("data:-1"))
    section = get_config("tiny_t2i_draft").reward_gradient
    section.reward, section.reward_model_dir = "model", str(workdir)
    reward, reward_params = reward_of_config(section, stage)
    consts = {"vae": stage.consts["vae"], "reward": reward_params}
    batch = stage.prepare(next(synthetic_pair_iterator(config, 77)))
    context, _ = stage.encode_text(stage.consts["text"], batch["input_ids"])
    score = jax.jit(lambda pixels: reward(consts, pixels, context))
    chosen, rejected = score(batch["chosen"]), score(batch["rejected"])
    assert np.mean(chosen > rejected) >= 0.75
    grad = jax.grad(lambda pixels: jnp.sum(reward(consts, pixels, context)))(batch["chosen"])
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
