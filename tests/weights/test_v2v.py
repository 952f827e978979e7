"""V2V conditioning: the I2V → V2V UNet conversion (zero new conv_in channels and noise-level
table: the same outputs as the I2V UNet at init), and the low-res math against PyTorch
(bilinear upsampling, the x4 upscaler's DDPM noise augmentation)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.diffusion.low_res import (  # noqa: E402
    MAX_NOISE_LEVEL,
    noise_augment,
    noise_level_alphas_cumprod,
    upsample_latents,
)
from mv2_jax.models.motion import UNetMotionModel  # noqa: E402
from mv2_jax.weights.load import read_config  # noqa: E402
from mv2_jax.weights.v2v import v2v_unet_from_i2v  # noqa: E402
from tests.reference import randomize_, relative_error  # noqa: E402
from tests.weights.tiny_models import MOTION_UNET  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

I2V = MOTION_UNET


def test_v2v_unet_from_i2v_starts_as_the_i2v_unet(tmp_path):
    randomize_(diffusers.UNetMotionModel(**I2V)).save_pretrained(tmp_path)
    i2v, params = mv2_jax.load_component(tmp_path)
    config = read_config(tmp_path)
    v2v_config, v2v_params = v2v_unet_from_i2v(config, params, num_noise_levels=20)
    assert v2v_config["in_channels"] == 8 and v2v_config["num_class_embeds"] == 20
    assert config["in_channels"] == 4  # the input dict is left alone
    v2v = UNetMotionModel.from_config(v2v_config)
    init = functools.partial(v2v.init, class_labels=np.zeros(1, np.int32))
    shapes = jax.eval_shape(
        init, jax.random.key(0), np.zeros((1, 1, 8, 8, 8)), np.zeros(1), np.zeros((1, 7, 24))
    )
    assert jax.tree.map(np.shape, v2v_params) == jax.tree.map(np.shape, nn.unbox(shapes)["params"])

    rng = np.random.default_rng(0)
    noisy = rng.standard_normal((2, 3, 8, 8, 4), np.float32)
    low_res = 3 * rng.standard_normal((2, 3, 8, 8, 4), np.float32)
    t, context = np.array([5.0, 900.0], np.float32), rng.standard_normal((2, 7, 24), np.float32)
    expected = jax.jit(lambda: i2v.apply({"params": params}, noisy, t, context))()
    apply = jax.jit(
        lambda low, level: v2v.apply(
            {"params": v2v_params}, jnp.concatenate([noisy, low], -1), t, context,
            class_labels=level,
        )
    )  # fmt: skip
    actual = apply(low_res, np.array([0, 19], np.int32))
    # the zero rows add exact zeros, but XLA's conv sums 8 inputs in another order than 4: fp32
    # rounding (≈1e-7 per op) through the network; the low-res input has no effect at all
    assert relative_error(actual, expected) <= 1e-5
    np.testing.assert_array_equal(actual, apply(-low_res, np.array([7, 3], np.int32)))

    with pytest.raises(ValueError, match="already converted"):
        v2v_unet_from_i2v(v2v_config, v2v_params)


def test_upsample_latents_is_torch_bilinear():
    latents = np.random.default_rng(1).standard_normal((2, 3, 5, 7, 4), np.float32)
    actual = upsample_latents(latents, (12, 16))
    assert actual.shape == (2, 3, 12, 16, 4)
    frames = torch.from_numpy(latents.reshape(6, 5, 7, 4)).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        frames, size=(12, 16), mode="bilinear", align_corners=False
    )
    expected = expected.permute(0, 2, 3, 1).numpy().reshape(2, 3, 12, 16, 4)
    assert relative_error(actual, expected) <= 1e-6
    assert upsample_latents(latents, (5, 7)) is latents


def test_noise_augment_is_the_x4_upscalers_low_res_scheduler():
    low_res_scheduler = diffusers.DDPMScheduler(
        beta_start=1e-4, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    np.testing.assert_allclose(
        noise_level_alphas_cumprod(), low_res_scheduler.alphas_cumprod.numpy(), rtol=1e-6
    )
    rng = np.random.default_rng(2)
    latents = rng.standard_normal((2, 2, 3, 4, 4), np.float32)
    noise = rng.standard_normal((2, 2, 3, 4, 4), np.float32)
    levels = np.array([20, MAX_NOISE_LEVEL], np.int32)
    expected = low_res_scheduler.add_noise(
        torch.from_numpy(latents), torch.from_numpy(noise), torch.from_numpy(levels).long()
    ).numpy()
    actual = noise_augment(latents, levels, noise)
    assert relative_error(actual, expected) <= 1e-6
    assert relative_error(noise_augment(latents, np.array([0, 0]), noise), latents) < 0.02
