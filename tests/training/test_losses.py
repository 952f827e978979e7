"""The loss pieces against diffusers' training conventions (DDPMScheduler.add_noise and
get_velocity, diffusers.training_utils.compute_snr) on the same numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.training import losses

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.torch

CONFIGS = [
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="linear"),
    dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True),
]


def _reference(config):
    """diffusers' scheduler and its ᾱ. The loss math is what is tested here: ᾱ itself matches
    diffusers' in tests/diffusion (bit for bit given torch's float32 sqrt, which zero-SNR
    rescaling uses and which near t = 0, where 1 − ᾱ ≈ 1e-3, moves √(1 − ᾱ) by ~1e-5)."""
    scheduler = diffusers.DDPMScheduler(**config)
    ours = make_scheduler(dict(scheduler.config), "ddpm").train_alphas_cumprod()
    np.testing.assert_allclose(ours, scheduler.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-7)
    return scheduler, jnp.asarray(scheduler.alphas_cumprod.numpy())


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_noisy_and_target_match_diffusers(config, prediction_type):
    scheduler, alphas_cumprod = _reference(config)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((5, 6, 6, 4)).astype(np.float32)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    timesteps = np.array([0, 17, 500, 998, 999])
    noisy, target = losses.noisy_and_target(
        jnp.asarray(latents), jnp.asarray(noise), jnp.asarray(timesteps), alphas_cumprod,
        prediction_type,
    )  # fmt: skip
    t_lat, t_noise, t_steps = (torch.from_numpy(a) for a in (latents, noise, timesteps))
    ref_noisy = scheduler.add_noise(t_lat, t_noise, t_steps).numpy()
    ref_target = {
        "epsilon": noise,
        "v_prediction": scheduler.get_velocity(t_lat, t_noise, t_steps).numpy(),
        "sample": latents,
    }[prediction_type]
    np.testing.assert_allclose(noisy, ref_noisy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target, ref_target, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS[:2])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_recipe(config, prediction_type):
    from diffusers.training_utils import compute_snr

    scheduler, alphas_cumprod = _reference(config)
    timesteps = np.array([0, 10, 100, 400, 700, 999])
    snr = compute_snr(scheduler, torch.from_numpy(timesteps)).numpy()
    gamma = 5.0
    # diffusers' train_text_to_image.py: min(SNR, γ) / SNR for ε, / (SNR + 1) for v.
    base = snr if prediction_type == "epsilon" else snr + 1
    expected = np.minimum(snr, gamma) / base
    got = losses.min_snr_weights(alphas_cumprod, jnp.asarray(timesteps), gamma, prediction_type)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(losses.min_snr_weights(alphas_cumprod, jnp.asarray(timesteps), 0.0, "x") == 1)


def test_noise_and_timesteps_depend_only_on_each_key():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(6))
    noise = losses.per_example_noise(keys, (4, 4, 3), 0.0)
    swapped = losses.per_example_noise(keys[::-1], (4, 4, 3), 0.0)
    np.testing.assert_array_equal(noise[::-1], swapped)
    steps = losses.per_example_timesteps(keys, 1000)
    assert steps.dtype == jnp.int32 and steps.min() >= 0 and steps.max() < 1000
    assert len(set(np.asarray(steps).tolist())) > 1


def test_offset_noise_shifts_each_channel_by_a_constant():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(3))
    plain = losses.per_example_noise(keys, (8, 8, 4), 0.0)
    offset = losses.per_example_noise(keys, (8, 8, 4), 0.1)
    shift = np.asarray(offset - plain)
    # One constant per example and channel, over all pixels, of scale 0.1.
    np.testing.assert_allclose(shift, shift[:, :1, :1, :] * np.ones_like(shift), atol=1e-6)
    assert 0 < np.abs(shift[:, 0, 0, :]).max() < 0.5


def test_weighted_mse_weights_each_example():
    prediction = jnp.stack([jnp.ones((2, 2)), 3 * jnp.ones((2, 2))])
    target = jnp.zeros((2, 2, 2))
    value = losses.weighted_mse(prediction, target, jnp.array([1.0, 0.5]))
    assert float(value) == pytest.approx((1 * 1 + 0.5 * 9) / 2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_are_finite_at_zero_terminal_snr(prediction_type):
    """With `rescale_betas_zero_snr` the last ᾱ is 0 (SNR 0): weights stay finite there."""
    _, alphas_cumprod = _reference(CONFIGS[2])
    assert float(alphas_cumprod[-1]) == 0.0
    weights = losses.min_snr_weights(alphas_cumprod, jnp.array([0, 500, 999]), 5.0, prediction_type)
    assert np.all(np.isfinite(weights)), weights
    if prediction_type == "epsilon":
        assert float(weights[-1]) == 1.0
