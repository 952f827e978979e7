"""Video frame interpolation at any time t ∈ (0, 1): an IFNet-style flow estimator (RIFE v4,
Huang et al. 2022, arXiv:2011.06294) followed by a small refinement net. Frames `[B,H,W,3]` in
[0, 1], flows in pixels (x then y), channels-last.

Layout follows RIFE v4's IFNet so that its weights can be mapped later: blocks `block{i}` with
`conv0_0_0`, `conv0_1_0` (two stride-2 3×3 convs), `convblock_{j}` (residual convs with a
per-channel `beta`) and `lastconv_0` (a 4×4 stride-2 transposed conv, then a pixel shuffle).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.conv import Conv
from mv2_jax.models.warp import backward_warp

_FLOW_AND_MASK = 5  # flow t→0 (x, y), flow t→1 (x, y), fusion mask logit


def _leaky(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.2)


def resize(x: jax.Array, factor: float) -> jax.Array:
    """Bilinear resize of `[B,H,W,C]` by `factor` (half-pixel centres, no antialiasing: the
    same as torch `interpolate(mode="bilinear", align_corners=False)` at integer factors)."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    shape = (b, round(h * factor), round(w * factor), c)
    return jax.image.resize(x, shape, "linear", antialias=False)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """`[B,H,W,C·r²]` → `[B,H·r,W·r,C]`, channel order as torch `PixelShuffle` (c, i, j)."""
    b, h, w, c = x.shape
    out = c // (factor * factor)
    x = x.reshape(b, h, w, out, factor, factor)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, out)


def _conv3x3(features: int, stride: int, name: str, dtype, param_dtype, **kw) -> Conv:
    return Conv(
        features,
        (3, 3),
        (stride, stride),
        ((1, 1), (1, 1)),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        **kw,
    )


def _upsample_conv(features: int, name: str, dtype, param_dtype) -> nn.ConvTranspose:
    """torch `ConvTranspose2d(c, features, 4, 2, 1)`: kernel `[4,4,features,c]`, zero-init so
    a new head starts by predicting nothing (zero flow residual, mask 0.5)."""
    return nn.ConvTranspose(
        features,
        (4, 4),
        strides=(2, 2),
        padding=((2, 2), (2, 2)),
        transpose_kernel=True,
        kernel_init=nn.initializers.zeros_init(),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def global_shift(frame0: jax.Array, frame1: jax.Array) -> jax.Array:
    """The dominant translation `[B, 2]` (x, y pixels) of the content from frame0 to frame1,
    by phase correlation (Kuglin & Hines 1975) of Hann-windowed grey images with a parabolic
    sub-pixel peak. No gradient: it is a fixed starting point, not a learned one."""
    frame0, frame1 = jax.lax.stop_gradient(frame0), jax.lax.stop_gradient(frame1)
    b, h, w, _ = frame0.shape
    window = jnp.outer(jnp.hanning(h), jnp.hanning(w))

    def spectrum(frame):
        grey = frame.mean(-1)
        return jnp.fft.rfft2((grey - grey.mean((1, 2), keepdims=True)) * window)

    cross = spectrum(frame1) * jnp.conj(spectrum(frame0))
    corr = jnp.fft.irfft2(cross / (jnp.abs(cross) + 1e-9), s=(h, w))  # a peak at the shift
    peak = jnp.argmax(corr.reshape(b, -1), axis=-1)
    y, x = peak // w, peak % w
    rows = jnp.arange(b)

    def refine(at, axis_size, pick):  # parabola through the peak and its two neighbours
        left, mid, right = (pick((at + d) % axis_size) for d in (-1, 0, 1))
        curve = left - 2 * mid + right
        offset = jnp.where(curve < 0, 0.5 * (left - right) / jnp.where(curve < 0, curve, 1), 0)
        shift = at + jnp.clip(offset, -0.5, 0.5)
        return jnp.where(shift > axis_size / 2, shift - axis_size, shift)

    dy = refine(y, h, lambda i: corr[rows, i, x])
    dx = refine(x, w, lambda i: corr[rows, y, i])
    return jnp.stack([dx, dy], axis=-1)


def global_flow(frame0: jax.Array, frame1: jax.Array, t: jax.Array) -> jax.Array:
    """Flows `[B,H,W,4]` (t→0, t→1) of a pure translation by `global_shift`: content at p at
    time t was at p − t·d in frame0 and is at p + (1 − t)·d in frame1."""
    shift = global_shift(frame0, frame1)[:, None, None, :]
    t = t[:, None, None, None]
    flow = jnp.concatenate([-t * shift, (1 - t) * shift], axis=-1)
    return jnp.broadcast_to(flow, (*frame0.shape[:3], 4))


class ResConv(nn.Module):
    """`leaky(conv(x) · beta + x)`, beta per channel (RIFE v4's `ResConv`)."""

    channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        beta = self.param("beta", nn.initializers.ones_init(), (self.channels,), self.param_dtype)
        y = _conv3x3(self.channels, 1, "conv", self.dtype, self.param_dtype)(x)
        return _leaky(y * beta.astype(self.dtype) + x)


class IFBlock(nn.Module):
    """One coarse-to-fine level: its input at 1/`scale`, features at 1/(4·`scale`), out a flow
    residual `[B,H,W,4]` (pixels) and a mask-logit residual `[B,H,W,1]` at full size."""

    channels: int
    num_res: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, flow: jax.Array | None, scale: int):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = resize(x, 1 / scale)
        if flow is not None:
            x = jnp.concatenate([x, resize(flow, 1 / scale) / scale], axis=-1)
        x = x.astype(self.dtype)
        feat = _leaky(_conv3x3(self.channels // 2, 2, "conv0_0_0", **kw)(x))
        feat = _leaky(_conv3x3(self.channels, 2, "conv0_1_0", **kw)(feat))
        for j in range(self.num_res):
            feat = ResConv(self.channels, name=f"convblock_{j}", **kw)(feat)
        out = _upsample_conv(4 * _FLOW_AND_MASK, "lastconv_0", **kw)(feat)
        out = resize(pixel_shuffle(out, 2).astype(jnp.float32), scale)
        return out[..., :4] * scale, out[..., 4:5]


class RefineNet(nn.Module):
    """A residual correction of the fused frame from both frames, their warps, the fused frame,
    the mask and t; at half resolution, zero-init output (starts as the identity)."""

    channels: int
    num_res: int = 2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        feat = _leaky(_conv3x3(self.channels, 2, "conv0", **kw)(inputs.astype(self.dtype)))
        for j in range(self.num_res):
            feat = ResConv(self.channels, name=f"convblock_{j}", **kw)(feat)
        return _upsample_conv(3, "lastconv", **kw)(feat).astype(jnp.float32)


class FrameInterpolator(nn.Module):
    """`apply({"params": p}, frame0, frame1, t)` → the frame at time `t`.

    frame0, frame1: `[B,H,W,3]` in [0, 1]; t: `[B]` (or a scalar) in (0, 1). H and W must be
    multiples of `size_multiple`. With `return_aux=True` also a dict of `flow` `[B,H,W,4]` (t→0
    then t→1, pixels), `mask` `[B,H,W,1]` (weight of frame0), and per block (for deep
    supervision) `merged`, the fused frame, and `flows`, the flow so far."""

    block_channels: tuple[int, ...] = (96, 64, 48)
    block_scales: tuple[int, ...] = (4, 2, 1)  # each block's input at 1/scale, coarse to fine
    num_res: int = 4  # residual convs per block (RIFE v4: 8)
    refine_channels: int = 32  # 0: no refinement net
    # Start from the frames' dominant translation (phase correlation), the blocks then add
    # residual flows: pans are right before any training, the net learns the rest.
    global_motion: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (each block downsamples its input by 4)."""
        return max(4 * max(self.block_scales), 2)

    def check_size(self, height: int, width: int) -> None:
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"FrameInterpolator takes frames whose height and width are multiples of {m}; "
                f"got {height}×{width}. Pad (e.g. edge-pad) to "
                f"{-(-height // m) * m}×{-(-width // m) * m} and crop the result."
            )

    @nn.compact
    def __call__(
        self, frame0: jax.Array, frame1: jax.Array, t: jax.Array, return_aux: bool = False
    ):
        if len(self.block_channels) != len(self.block_scales):
            raise ValueError(
                f"block_channels {self.block_channels} and block_scales {self.block_scales} "
                "must have one entry per block"
            )
        if frame0.ndim != 4 or frame0.shape[-1] != 3 or frame0.shape != frame1.shape:
            raise ValueError(
                f"frame0 and frame1 must both be [B,H,W,3]; got {frame0.shape} and {frame1.shape}"
            )
        b, h, w, _ = frame0.shape
        self.check_size(h, w)
        frame0, frame1 = frame0.astype(jnp.float32), frame1.astype(jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,))
        t_map = jnp.broadcast_to(t[:, None, None, None], (b, h, w, 1))

        flow = mask = None
        warped0, warped1, merged, flows = frame0, frame1, [], []
        for i, (channels, scale) in enumerate(zip(self.block_channels, self.block_scales)):
            block = IFBlock(channels, self.num_res, self.dtype, self.param_dtype, name=f"block{i}")
            if flow is None:
                flow, mask = block(jnp.concatenate([frame0, frame1, t_map], -1), None, scale)
                if self.global_motion:
                    flow = flow + global_flow(frame0, frame1, t)
            else:
                x = jnp.concatenate([warped0, warped1, t_map, mask], -1)
                d_flow, d_mask = block(x, flow, scale)
                flow, mask = flow + d_flow, mask + d_mask
            warped0 = backward_warp(frame0, flow[..., :2])
            warped1 = backward_warp(frame1, flow[..., 2:])
            weight = jax.nn.sigmoid(mask)
            merged.append(weight * warped0 + (1 - weight) * warped1)
            flows.append(flow)

        frame = merged[-1]
        if self.refine_channels:
            inputs = [frame0, frame1, warped0, warped1, frame, weight, t_map]
            refine = RefineNet(
                self.refine_channels, dtype=self.dtype, param_dtype=self.param_dtype, name="refine"
            )
            frame = frame + refine(jnp.concatenate(inputs, -1))
        frame = jnp.clip(frame, 0.0, 1.0)
        if return_aux:
            return frame, {"flow": flow, "mask": weight, "merged": merged, "flows": flows}
        return frame
