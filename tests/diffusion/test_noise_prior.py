"""The latent noise priors: the mean shift's formula and variance, and the frequency prior
keeping exactly the reference's low frequencies and the fresh noise's high ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.diffusion.noise_prior import frequency_prior, gaussian_low_pass, mean_shift_prior

B, F, H, W, C = 2, 8, 16, 16, 4


def _draw(seed: int, shape) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_mean_shift_formula_and_scale():
    reference, noise = _draw(0, (B, H, W, C)), _draw(1, (B, F, H, W, C))
    np.testing.assert_array_equal(mean_shift_prior(reference, noise, 0.0), noise)
    np.testing.assert_allclose(
        mean_shift_prior(reference, noise, 1.0), jnp.broadcast_to(reference[:, None], noise.shape)
    )
    z = mean_shift_prior(reference, noise, 0.3)
    np.testing.assert_allclose(z, np.sqrt(0.3) * reference[:, None] + np.sqrt(0.7) * noise, 1e-6)
    assert abs(float(z.std()) - 1.0) < 0.05  # unit-scale inputs stay unit scale
    # Every frame leans towards the reference by the same amount.
    corr = [np.corrcoef(np.ravel(z[:, k]), np.ravel(reference))[0, 1] for k in range(F)]
    assert np.allclose(corr, np.sqrt(0.3), atol=0.05)
    with pytest.raises(ValueError, match="strength"):
        mean_shift_prior(reference, noise, 1.5)


def test_low_pass_filter_shape_and_extremes():
    low = gaussian_low_pass(F, H, W, 0.25, 0.25)
    assert low.shape == (F, H, W, 1) and float(low[0, 0, 0, 0]) == 1.0
    assert float(low.max()) == 1.0 and float(low.min()) > 0
    only_mean = gaussian_low_pass(F, H, W, 0.0, 0.0)
    assert float(only_mean.sum()) == 1.0  # the DC term alone


def test_frequency_prior_splits_the_spectrum():
    reference = _draw(0, (B, H, W, C))
    noise, reference_noise = _draw(1, (B, F, H, W, C)), _draw(2, (B, F, H, W, C))
    a = 0.05
    z = frequency_prior(reference, noise, reference_noise, a, 0.2, 0.2)
    noised = np.sqrt(a) * reference[:, None] + np.sqrt(1 - a) * reference_noise
    low = np.asarray(gaussian_low_pass(F, H, W, 0.2, 0.2))
    spectrum = np.fft.fftn(np.asarray(z), axes=(1, 2, 3))
    expected = np.fft.fftn(noised, axes=(1, 2, 3)) * low + np.fft.fftn(
        np.asarray(noise), axes=(1, 2, 3)
    ) * (1 - low)
    np.testing.assert_allclose(spectrum, expected, atol=2e-3)
    # The DC term is the noised reference's, the highest frequency almost all fresh noise.
    dc = np.fft.fftn(noised, axes=(1, 2, 3))[:, 0, 0, 0]
    np.testing.assert_allclose(spectrum[:, 0, 0, 0], dc, atol=2e-3)
    # Cutoff 0 keeps only the reference's mean; a huge cutoff is the noised reference itself.
    z0 = frequency_prior(reference, noise, reference_noise, a, 0.0, 0.0)
    np.testing.assert_allclose(z0.mean(axis=(1, 2, 3)), noised.mean(axis=(1, 2, 3)), atol=1e-5)
    z_all = frequency_prior(reference, noise, reference_noise, a, 1e6, 1e6)
    np.testing.assert_allclose(z_all, noised, atol=1e-4)
