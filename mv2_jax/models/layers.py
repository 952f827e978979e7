"""Parameterised building blocks with logical axis names on every param.

Every model in `mv2_jax.models` builds its Dense / Conv / norm / embedding layers through these
factories, so that params carry logical names (`embed`, `heads`, `mlp`, `conv_in`, `conv_out`,
`norm`, `vocab`) which `mv2_jax.parallel` maps to mesh axes by rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.conv import Conv

Dtype = Any

# PyTorch's default init is close enough for training from scratch; converted weights overwrite it.
_KERNEL_INIT = nn.initializers.lecun_normal()


def _named(init, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(axes))


# A LoRA beside a Dense kernel, as a training run hands it to the model unfused
# (`mv2_jax.lora.leaves.side_path_leaves`): the factors and their multiplier.
LORA_DOWN, LORA_UP, LORA_SCALE = "lora_down", "lora_up", "lora_scale"


class Dense(nn.Dense):
    """flax's Dense, plus a LoRA side path where its params hold one:
    `y = x W + b + scale · (x down) up`. Training a LoRA this way, each device contracts its
    own rows with the rank-r factors before anything is summed over the mesh: only the factors'
    gradients cross devices, where a fused `W + scale · down up` sums the full kernel's
    gradient first (benchmarks/plan.py, issue 23)."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        y = super().__call__(inputs)
        if not self.has_variable("params", LORA_DOWN):
            return y
        down, up, scale = (self.get_variable("params", n) for n in (LORA_DOWN, LORA_UP, LORA_SCALE))
        dtype = self.dtype or y.dtype
        h = jnp.einsum("...i,ir->...r", inputs.astype(dtype), down.astype(dtype))
        side = jnp.einsum("...r,ro->...o", h, up.astype(dtype))
        return y + (scale * side).astype(y.dtype)


def dense(
    features: int,
    axes: tuple[str | None, str | None] = ("embed", "embed"),
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init=_KERNEL_INIT,
    name: str | None = None,
) -> Dense:
    """A Dense layer whose kernel `[in, out]` carries the logical names `axes`."""
    return Dense(
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
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_named(kernel_init, (None,) * rank + tuple(axes)),
        bias_init=_named(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


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
    """GroupNorm with PyTorch's (two-pass) variance; statistics are always taken in fp32.

    Both matter in bf16 (tests/models/test_bf16.py): at 16,384 values per group with mean 30,
    bf16 statistics give 5e-3 relative error and the one-pass E[x²] − E[x]² variance gives
    garbage (×1000), against 1.6e-3 (the input's own rounding) in fp32."""
    return nn.GroupNorm(
        num_groups=num_groups,
        epsilon=epsilon,
        use_scale=use_scale,
        use_bias=use_bias,
        use_fast_variance=False,
        force_float32_reductions=True,
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
    """LayerNorm over the last axis with PyTorch's (two-pass) variance, statistics in fp32."""
    return nn.LayerNorm(
        epsilon=epsilon,
        use_scale=use_scale,
        use_bias=use_bias,
        use_fast_variance=False,
        force_float32_reductions=True,
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
