"""The guidance-scale embedding of LCM-distilled UNets against diffusers' own function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.diffusion.guidance import guidance_scale_embedding

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.torch

# w = guidance_scale − 1, as diffusers' LCM / SD / SDXL pipelines pass it (w = 0: no guidance)
WS = np.array([0.0, 0.5, 1.0, 2.5, 7.0, 14.0], np.float32)


def _diffusers(w: np.ndarray, dim: int) -> np.ndarray:
    # a method that never reads `self`; the same code in every diffusers pipeline that has it
    pipeline = diffusers.LatentConsistencyModelPipeline
    return pipeline.get_guidance_scale_embedding(None, torch.from_numpy(w), dim).numpy()


@pytest.mark.parametrize("dim", [4, 15, 32, 256, 512])
def test_matches_diffusers(dim):
    expected = _diffusers(WS, dim)
    actual = np.asarray(jax.jit(guidance_scale_embedding, static_argnums=1)(WS, dim))
    assert actual.shape == expected.shape == (len(WS), dim)
    # Both are fp32 sinusoids of 1000·w: an argument of 14000 carries an ulp of ~1e-3, so the
    # two orders of operations agree to a few ulps of each row's largest argument, no better.
    atol = 4 * np.finfo(np.float32).eps * 1000 * WS[:, None] + 1e-6
    excess = np.abs(actual - expected) - atol
    assert excess.max() <= 0, excess.max()
    if dim % 2:  # the zero column of odd dims
        assert not actual[:, -1].any()


def test_scalar_and_traced_w():
    """A traced scalar (the sampler's guidance scale) gives one row, broadcast by the UNet."""
    row = jax.jit(lambda g: guidance_scale_embedding(g - 1, 8))(jnp.float32(8.0))
    assert row.shape == (1, 8)
    np.testing.assert_allclose(row, guidance_scale_embedding(np.array([7.0]), 8), rtol=1e-6)
    np.testing.assert_allclose(row, _diffusers(np.array([7.0], np.float32), 8), atol=1e-4)
