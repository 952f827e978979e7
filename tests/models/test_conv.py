"""Every algorithm `Conv` may pick (matmul, im2col, banded Winograd, XLA) equals XLA's
convolution in float64 numpy terms, for odd sizes, strides, paddings and ranks (no torch); the
CPU forms are only picked for wide convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.models import conv as conv_module
from mv2_jax.models.conv import Conv, winograd_3x3
from tests.reference import relative_error


def _reference(x, kernel, strides, padding):
    rank = kernel.ndim - 2
    spec = "N" + "DHW"[-rank:] + "C"
    return jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(kernel, jnp.float32),
        strides,
        padding,
        dimension_numbers=(spec, "DHW"[-rank:] + "IO", spec),
        precision=jax.lax.Precision.HIGHEST,
    )


CASES = [  # input spatial, kernel, stride, padding
    ((40, 36), (3, 3), (1, 1), ((1, 1), (1, 1))),  # Winograd
    ((33, 17), (3, 3), (1, 1), ((1, 1), (1, 1))),  # Winograd with odd sizes (partial tiles)
    ((12, 10), (3, 3), (1, 1), ((1, 1), (1, 1))),  # im2col
    ((9, 9), (3, 3), (2, 2), ((1, 1), (1, 1))),  # im2col, strided
    ((40, 40), (3, 3), (2, 2), ((0, 1), (0, 1))),  # XLA (the VAE's downsampler padding)
    ((20, 20), (1, 1), (1, 1), ((0, 0), (0, 0))),  # matmul
    ((30, 30), (5, 5), (1, 1), ((2, 2), (2, 2))),  # XLA, 5×5
    ((4, 6, 6), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),  # 3-d, im2col
    ((6, 20, 20), (3, 1, 1), (1, 1, 1), ((1, 1), (0, 0), (0, 0))),  # temporal, XLA
]


@pytest.mark.parametrize("spatial,window,strides,padding", CASES)
def test_conv_matches_xla(spatial, window, strides, padding, monkeypatch):
    monkeypatch.setattr(conv_module, "_CUSTOM_MIN_CHANNELS", 1)  # the CPU forms at any width
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *spatial, 6), np.float32)
    module = Conv(5, window, strides, padding)
    params = module.init(jax.random.key(0), x)["params"]
    out = module.apply({"params": params}, x)
    expected = _reference(x, params["kernel"], strides, padding) + params["bias"]
    assert out.shape == expected.shape
    assert relative_error(out, expected) <= 1e-5


def test_leading_dims_fold_into_batch():
    x = np.random.default_rng(1).standard_normal((2, 3, 10, 10, 4), np.float32)
    module = Conv(4, (3, 3), (1, 1), ((1, 1), (1, 1)))
    params = module.init(jax.random.key(0), x)["params"]
    out = module.apply({"params": params}, x)
    flat = module.apply({"params": params}, x.reshape(6, 10, 10, 4))
    np.testing.assert_array_equal(np.asarray(out).reshape(flat.shape), flat)


@pytest.mark.parametrize("band_tiles", [1, 3, 1000])
def test_winograd_bands(monkeypatch, band_tiles):
    monkeypatch.setattr(conv_module, "_WINOGRAD_BAND_TILES", band_tiles)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 21, 26, 7), np.float32)
    kernel = rng.standard_normal((3, 3, 7, 9), np.float32)
    out = jax.jit(winograd_3x3)(x, kernel)
    assert relative_error(out, _reference(x, kernel, (1, 1), ((1, 1), (1, 1)))) <= 1e-5


@pytest.mark.parametrize("channels,custom", [(64, False), (128, True)])
def test_cpu_forms_only_for_wide_convolutions(channels, custom):
    x = jnp.zeros((1, 12, 12, channels))
    module = Conv(channels, (3, 3), (1, 1), ((1, 1), (1, 1)))
    params = jax.eval_shape(module.init, jax.random.key(0), x)
    text = jax.jit(module.apply).lower(params, x).as_text()
    assert ("convolution" in text) != (custom and jax.default_backend() == "cpu")
