"""ResNet blocks and 2× resampling shared by the UNets and the VAE (diffusers' names), NHWC."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.models.layers import activation, conv, dense, group_norm
from mv2_jax.parallel.sharding import constrain


class ResnetBlock2D(nn.Module):
    """GroupNorm → act → conv → (+ time embedding) → GroupNorm → act → conv, plus shortcut.

    `time_embedding_norm="scale_shift"` applies the time embedding as FiLM after the second norm.
    `temb_channels=None` (the VAE) has no time projection.
    """

    out_channels: int
    temb_channels: int | None = 512
    groups: int = 32
    groups_out: int | None = None
    eps: float = 1e-6
    act_fn: str = "silu"
    time_embedding_norm: str = "default"
    skip_time_act: bool = False
    output_scale_factor: float = 1.0
    use_in_shortcut: bool | None = None
    conv_shortcut_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = activation(self.act_fn)
        h = act(group_norm(self.groups, self.eps, name="norm1", **kw)(x))
        h = conv(self.out_channels, 3, name="conv1", **kw)(h)
        scale_shift = None
        if self.temb_channels is not None:
            if temb is None:
                raise ValueError("this ResNet block needs a time embedding `temb`")
            t = temb if self.skip_time_act else act(temb)
            proj_dim = self.out_channels * (2 if self.time_embedding_norm == "scale_shift" else 1)
            t = dense(proj_dim, ("embed", "embed"), name="time_emb_proj", **kw)(t)[:, None, None, :]
            if self.time_embedding_norm == "scale_shift":
                scale_shift = jnp.split(t, 2, axis=-1)
            else:
                h = h + t
        h = group_norm(self.groups_out or self.groups, self.eps, name="norm2", **kw)(h)
        if scale_shift is not None:
            h = h * (1 + scale_shift[0]) + scale_shift[1]
        h = conv(self.out_channels, 3, name="conv2", **kw)(act(h))
        use_shortcut = self.use_in_shortcut
        if use_shortcut is None:
            use_shortcut = x.shape[-1] != self.out_channels
        if use_shortcut:
            x = conv(
                self.out_channels,
                1,
                padding=0,
                use_bias=self.conv_shortcut_bias,
                name="conv_shortcut",
                **kw,
            )(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Stride-2 3×3 convolution. `padding=0` pads right/bottom only (the VAE's layout)."""

    out_channels: int
    padding: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(
            self.out_channels,
            3,
            strides=2,
            padding=self.padding,
            name="conv",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize of `[B,H,W,C]` with PyTorch's index rule
    `src = floor(dst · in/out)`, so odd sizes (75 → 38 → … → 75) match diffusers exactly."""
    height, width = x.shape[1:3]
    if size == (2 * height, 2 * width):  # the common case: a broadcast, no gather
        b, _, _, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, height, 2, width, 2, c))
        return x.reshape(b, 2 * height, 2 * width, c)
    rows = np.floor(np.arange(size[0], dtype=np.float32) * np.float32(height / size[0]))
    cols = np.floor(np.arange(size[1], dtype=np.float32) * np.float32(width / size[1]))
    rows = np.minimum(rows.astype(np.int32), height - 1)
    cols = np.minimum(cols.astype(np.int32), width - 1)
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """Nearest 2× (or to `output_size`) then a 3×3 convolution."""

    out_channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        size = output_size or (2 * x.shape[1], 2 * x.shape[2])
        # The rows (images, or a video's frames) stay split over the mesh through the resize and
        # the conv: left to itself, the partitioner gathered the whole batch onto every device
        # to keep the conv's weight split instead (benchmarks/plan.py, issue 23).
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = constrain(nearest_resize(x, tuple(size)), ("video_rows",))
        return constrain(conv(self.out_channels, 3, name="conv", **kw)(x), ("video_rows",))
