"""Channels-last convolution that picks the fastest exact algorithm for the platform and shape.

On GPU/TPU XLA's own convolution is used. XLA's CPU convolution is slow at the UNet's shapes
(hundreds of channels), so on CPU, for convolutions with ≥ 128 input and output channels: 1×1
kernels are a matmul; small feature maps (≤ 16×16) are one matmul over gathered
patches (im2col, up to 2.8× faster); larger 3×3 stride-1 maps use Winograd F(2×2, 3×3)
(Lavin & Gray 2016, arXiv:1509.09308) in row bands that stay in cache (up to 1.65× faster).
All forms agree with `lax.conv_general_dilated` to fp32 rounding (relative error ~2e-6).
Narrower convolutions (the shapes world's models, ≤ 64 channels) stay XLA's: there the forms
above compile 2–6× slower (thousands of slices and adds) and run no faster (measured at 16²–32²
latents: UNet 6.2 vs 14.4 s to compile, a 128² VAE decode 2.0 vs 11.3 s).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_CUSTOM_MIN_CHANNELS = 128  # below (in or out): XLA's own convolution on CPU too
_PATCH_MATMUL_MAX_POSITIONS = 256
# Winograd runs in bands of tile rows: about this many matmul rows (tiles) per band keeps the
# matmuls efficient and the 16 transformed planes in cache (tuned in benchmarks/unet_step.py).
_WINOGRAD_BAND_TILES = 512
_SPATIAL = "DHW"


class Conv(nn.Module):
    """N-d convolution, params `kernel [*window, in, out]` and `bias [out]`, explicit
    PyTorch-style padding. Leading dims beyond one batch dim are folded into the batch."""

    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rank = len(self.kernel_size)
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        lead = x.shape[: -(rank + 1)]
        x = x.reshape(-1, *x.shape[-(rank + 1) :]).astype(self.dtype)
        with jax.named_scope("convolution"):  # names these ops in profiles
            y = self._convolve(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y.reshape(*lead, *y.shape[1:])

    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        rank = len(self.kernel_size)
        wide = min(x.shape[-1], self.features) >= _CUSTOM_MIN_CHANNELS
        if jax.default_backend() == "cpu" and wide:
            out_spatial = [
                (size + lo + hi - k) // s + 1
                for size, (lo, hi), k, s in zip(
                    x.shape[1:-1], self.padding, self.kernel_size, self.strides
                )
            ]
            unit_stride = all(s == 1 for s in self.strides)
            if unit_stride and all(k == 1 for k in self.kernel_size) and not _any_padding(self):
                return jnp.dot(x, kernel.reshape(kernel.shape[-2:]))
            if math.prod(out_spatial) <= _PATCH_MATMUL_MAX_POSITIONS:
                return _patch_matmul(x, kernel, self.strides, self.padding, out_spatial)
            if self.kernel_size == (3, 3) and unit_stride and self.padding == ((1, 1),) * 2:
                return winograd_3x3(x, kernel)
        spec = "N" + _SPATIAL[-rank:] + "C"
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            self.strides,
            self.padding,
            dimension_numbers=(spec, _SPATIAL[-rank:] + "IO", spec),
        )


def _any_padding(conv: Conv) -> bool:
    return any(lo or hi for lo, hi in conv.padding)


def _patch_matmul(x, kernel, strides, padding, out_spatial):
    """im2col: every window offset's strided view, concatenated on channels, one matmul."""
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    views = []
    for offset in itertools.product(*(range(k) for k in kernel.shape[:-2])):
        index = tuple(
            slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(offset, out_spatial, strides)
        )
        views.append(x[(slice(None), *index)])
    return jnp.dot(jnp.concatenate(views, axis=-1), kernel.reshape(-1, kernel.shape[-1]))


# Winograd F(2,3): y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for 4×4 input tiles d and 3×3 kernels g.
def _input_transform(r):  # Bᵀ along one axis
    return [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]


def _kernel_transform(r):  # G along one axis
    return [r[0], (r[0] + r[1] + r[2]) * 0.5, (r[0] - r[1] + r[2]) * 0.5, r[2]]


def _output_transform(r):  # Aᵀ along one axis
    return [r[0] + r[1] + r[2], r[1] - r[2] - r[3]]


def winograd_3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3×3, stride 1, padding 1 convolution of `x [N,H,W,C]` with `kernel [3,3,C,O]`.

    Computed in fp32 whatever the inputs' dtype, the result cast back: the transforms add and
    subtract tile entries whose sums cancel, and rounding each to bf16 gave 4.4× the error of
    XLA's direct bf16 convolution (bf16 inputs, 128 channels, 32²: 7.2e-3 from the exact result
    against 1.7e-3, the output's own rounding, which is what the fp32 transforms leave)."""
    dtype = x.dtype
    compute = jnp.promote_types(dtype, jnp.float32)
    x, kernel = x.astype(compute), kernel.astype(compute)
    n, h, w, c = x.shape
    tiles_h, tiles_w = -(-h // 2), -(-w // 2)
    band = max(1, min(tiles_h, -(-_WINOGRAD_BAND_TILES // (n * tiles_w))))
    n_bands = -(-tiles_h // band)
    rows = 2 * band * n_bands
    xp = jnp.pad(x, ((0, 0), (1, 1 + rows - h), (1, 1 + 2 * tiles_w - w), (0, 0)))
    g = [_kernel_transform([kernel[a, b] for a in range(3)]) for b in range(3)]
    u = jnp.stack([v for i in range(4) for v in _kernel_transform([g[b][i] for b in range(3)])])

    def one_band(start):
        xb = jax.lax.dynamic_slice_in_dim(xp, start, 2 * band + 2, axis=1)
        d = [
            [xb[:, a : a + 2 * band : 2, b : b + 2 * tiles_w : 2] for b in range(4)]
            for a in range(4)
        ]
        cols = [_input_transform([d[a][b] for a in range(4)]) for b in range(4)]
        planes = [v for i in range(4) for v in _input_transform([cols[b][i] for b in range(4)])]
        v = jnp.stack(planes).reshape(16, n * band * tiles_w, c)
        m = jnp.einsum("kpc,kco->kpo", v, u).reshape(4, 4, n, band, tiles_w, -1)
        mc = [_output_transform([m[i, j] for i in range(4)]) for j in range(4)]
        y = [_output_transform([mc[j][r] for j in range(4)]) for r in range(2)]
        y = jnp.stack([jnp.stack(y[0], axis=3), jnp.stack(y[1], axis=3)], axis=2)
        return y.reshape(n, 2 * band, 2 * tiles_w, -1)

    bands = jax.lax.map(one_band, jnp.arange(n_bands) * 2 * band)
    out = jnp.moveaxis(bands, 0, 1).reshape(n, rows, 2 * tiles_w, -1)
    return out[:, :h, :w].astype(dtype)
