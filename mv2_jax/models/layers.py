"""Parameterised building blocks with logical axis names on every param.

Every model in `mv2_jax.models` builds its Dense / Conv / norm / embedding layers through these
factories, so that params carry logical names (`embed`, `heads`, `mlp`, `conv_in`, `conv_out`,
`norm`, `vocab`) which `mv2_jax.parallel` maps to mesh axes by rule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default init is close enough for training from scratch; converted weights overwrite it.
_KERNEL_INIT = nn.initializers.lecun_normal()


def _named(init, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(axes))


def dense(
    features: int,
    axes: tuple[str | None, str | None] = ("embed", "embed"),
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init=_KERNEL_INIT,
    name: str | None = None,
) -> nn.Dense:
    """A Dense layer whose kernel `[in, out]` carries the logical names `axes`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_named(kernel_init, axes),
        bias_init=_named(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


def conv(
    features: int,
    kernel_size: int | Sequence[int] = 3,
    *,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[tuple[int, int]] = 1,
    axes: tuple[str | None, str | None] = ("conv_in", "conv_out"),
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init=_KERNEL_INIT,
    name: str | None = None,
) -> Conv:
    """An N-d convolution, channels-last, kernel `[*window, in, out]`, PyTorch's padding."""
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    rank = len(kernel_size)
    if isinstance(strides, int):
        strides = (strides,) * rank
    if isinstance(padding, int):
        padding = ((padding, padding),) * rank
    return Conv(
        features,
        kernel_size=tuple(kernel_size),
        strides=tuple(strides),
        padding=tuple(tuple(p) for p in padding),
        axes=tuple(axes),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        name=name,
    )


# Feature maps with at most this many output positions run as one matmul over gathered
# patches: XLA's CPU convolution is 1.3× (16×16×1280) to 2.8× (8×8×1280) slower there.
_PATCH_MATMUL_MAX_POSITIONS = 256
_SPATIAL = "DHW"


class Conv(nn.Module):
    """Channels-last N-d convolution (params `kernel [*window, in, out]`, `bias [out]`).

    Picks the fastest equivalent form by shape: a matmul for 1×1 kernels, a matmul over
    gathered patches (im2col) for small feature maps, else `lax.conv_general_dilated`.
    Leading dims beyond one batch dim are folded into the batch.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    axes: tuple[str | None, str | None] = ("conv_in", "conv_out")
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = _KERNEL_INIT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rank = len(self.kernel_size)
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel",
            _named(self.kernel_init, (None,) * rank + self.axes),
            (*self.kernel_size, in_features, self.features),
            self.param_dtype,
        )
        with jax.named_scope("convolution"):  # names these ops in profiles
            y = self._convolve(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                _named(nn.initializers.zeros_init(), self.axes[1:]),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y

    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        rank = len(self.kernel_size)
        in_features = x.shape[-1]
        lead = x.shape[: -(rank + 1)]
        x = x.reshape(-1, *x.shape[-(rank + 1) :]).astype(self.dtype)
        out_spatial = [
            (size + lo + hi - k) // s + 1
            for size, (lo, hi), k, s in zip(
                x.shape[1:-1], self.padding, self.kernel_size, self.strides
            )
        ]
        pointwise = all(k == 1 for k in self.kernel_size) and all(s == 1 for s in self.strides)
        if pointwise and not any(lo or hi for lo, hi in self.padding):
            y = jnp.dot(x, kernel.reshape(in_features, self.features))
        elif math.prod(out_spatial) <= _PATCH_MATMUL_MAX_POSITIONS:
            y = self._patch_matmul(x, kernel, out_spatial)
        else:
            spec = "N" + _SPATIAL[-rank:] + "C"
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                self.strides,
                self.padding,
                dimension_numbers=(spec, _SPATIAL[-rank:] + "IO", spec),
            )
        return y.reshape(*lead, *y.shape[1:])

    def _patch_matmul(self, x, kernel, out_spatial):
        """im2col: every window offset's strided view, concatenated on channels, one matmul."""
        x = jnp.pad(x, ((0, 0), *self.padding, (0, 0)))
        views = []
        for offset in itertools.product(*(range(k) for k in self.kernel_size)):
            index = tuple(
                slice(o, o + (n - 1) * s + 1, s)
                for o, n, s in zip(offset, out_spatial, self.strides)
            )
            views.append(x[(slice(None), *index)])
        patches = jnp.concatenate(views, axis=-1)
        return jnp.dot(patches, kernel.reshape(-1, self.features))


def group_norm(
    num_groups: int,
    epsilon: float,
    *,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.GroupNorm:
    """GroupNorm with PyTorch's (two-pass) variance; statistics are always taken in fp32."""
    return nn.GroupNorm(
        num_groups=num_groups,
        epsilon=epsilon,
        use_scale=use_scale,
        use_bias=use_bias,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=_named(nn.initializers.ones_init(), ("norm",)),
        bias_init=_named(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def layer_norm(
    epsilon: float = 1e-5,
    *,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.LayerNorm:
    """LayerNorm over the last axis with PyTorch's (two-pass) variance."""
    return nn.LayerNorm(
        epsilon=epsilon,
        use_scale=use_scale,
        use_bias=use_bias,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=_named(nn.initializers.ones_init(), ("norm",)),
        bias_init=_named(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def embed(
    num_embeddings: int,
    features: int,
    axes: tuple[str | None, str | None] = ("vocab", "embed"),
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Embed:
    """A lookup table `[num_embeddings, features]`."""
    return nn.Embed(
        num_embeddings,
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=_named(nn.initializers.normal(stddev=0.02), axes),
        name=name,
    )


def activation(name: str):
    """The activation functions diffusers / transformers name in their configs."""
    table = {
        "silu": nn.silu,
        "swish": nn.silu,
        "gelu": lambda x: nn.gelu(x, approximate=False),
        "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
        "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
        "relu": nn.relu,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(table)}")
    return table[name]
