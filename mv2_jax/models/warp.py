"""Bilinear backward warp (`image` sampled at `pixel + flow`) with a hand-written VJP.

Matches torch `grid_sample(mode="bilinear", padding_mode="border", align_corners=True)`. On
XLA CPU the scatter-adds of the image gradient are not the slow part (benchmarks/vfi.py): the
VJP wins by computing coordinates once and the flow gradient without short-axis reductions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _coordinates(flow: jax.Array, height: int, width: int):
    """Per output pixel: the flat index of its top-left neighbour, the bilinear fractions
    `(fx, fy)` and `inside [B,H,W,2]` (1 where the coordinate was not clamped, i.e. where it
    has a gradient; as in torch, the border itself counts as outside)."""
    batch = flow.shape[0]
    grid_y, grid_x = jnp.meshgrid(
        jnp.arange(height, dtype=flow.dtype), jnp.arange(width, dtype=flow.dtype), indexing="ij"
    )
    x = grid_x + flow[..., 0]
    y = grid_y + flow[..., 1]
    inside = jnp.stack([(x > 0) & (x < width - 1), (y > 0) & (y < height - 1)], axis=-1)
    x = jnp.clip(x, 0, width - 1)
    y = jnp.clip(y, 0, height - 1)
    # The top-left neighbour stays one short of the last row / column so that its right and
    # lower neighbours exist; at the far border the fraction is then exactly 1.
    x0 = jnp.clip(jnp.floor(x), 0, max(width - 2, 0))
    y0 = jnp.clip(jnp.floor(y), 0, max(height - 2, 0))
    fx, fy = x - x0, y - y0
    flat = y0.astype(jnp.int32) * width + x0.astype(jnp.int32)
    flat = flat + (jnp.arange(batch, dtype=jnp.int32) * height * width)[:, None, None]
    return flat, fx, fy, inside.astype(flow.dtype)


def _neighbour_offsets(height: int, width: int) -> tuple[int, int, int, int]:
    """Flat-index offsets of the top-left, right, lower and lower-right neighbours (an axis of
    size 1 reads its only pixel, with weight 0, as the neighbour)."""
    right, below = (1 if width > 1 else 0), (width if height > 1 else 0)
    return 0, right, below, below + right


def _corners(image: jax.Array, flat: jax.Array) -> tuple[jax.Array, ...]:
    """The four neighbours `[B,H,W,C]` of each sample: four gathers of C-rows."""
    b, h, w, c = image.shape
    rows = image.reshape(b * h * w, c)
    return tuple(rows[flat + offset] for offset in _neighbour_offsets(h, w))


def _channel_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """`sum(a * b, axis=-1)`. XLA CPU reduces a short minor axis 17–48× slower than it adds
    a few products (C = 8, 3), so small channel counts are summed term by term."""
    if a.shape[-1] <= 16:
        return sum(a[..., k] * b[..., k] for k in range(a.shape[-1]))
    return jnp.einsum("...c,...c->...", a, b)


def _warp_forward(image: jax.Array, flow: jax.Array):
    flat, fx, fy, inside = _coordinates(flow, image.shape[1], image.shape[2])
    top_left, right, below, below_right = _corners(image, flat)
    fx_, fy_ = fx[..., None].astype(image.dtype), fy[..., None].astype(image.dtype)
    out = (top_left * (1 - fx_) + right * fx_) * (1 - fy_) + (
        below * (1 - fx_) + below_right * fx_
    ) * fy_
    return out, (image, flat, fx, fy, inside)


@jax.custom_vjp
def _warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    return _warp_forward(image, flow)[0]


def _warp_fwd(image: jax.Array, flow: jax.Array):
    out, residuals = _warp_forward(image, flow)
    # Materialise the coordinates once: without the barrier XLA fuses their arithmetic into
    # every consumer in the backward pass and recomputes it per channel (~25% slower).
    return out, jax.lax.optimization_barrier(residuals)


def _warp_bwd(residuals, grad_out):
    image, flat, fx, fy, inside = residuals
    b, h, w, c = image.shape
    fx_, fy_ = fx[..., None].astype(image.dtype), fy[..., None].astype(image.dtype)
    # Image: each output pixel sends weight · gradient to its four neighbours (scatter-adds of
    # C-rows; one scatter of [4·C] rows plus shifts measured no faster on XLA CPU).
    weights = ((1 - fx_) * (1 - fy_), fx_ * (1 - fy_), (1 - fx_) * fy_, fx_ * fy_)
    grad_image = jnp.zeros((b * h * w, c), grad_out.dtype)
    for offset, weight in zip(_neighbour_offsets(h, w), weights):
        grad_image = grad_image.at[(flat + offset).reshape(-1)].add(
            (weight * grad_out).reshape(-1, c)
        )
    grad_image = grad_image.reshape(b, h, w, c)
    # Flow: d out / d x = (1 − fy)·(right − top_left) + fy·(below_right − below), likewise y;
    # the neighbours are gathered again rather than kept (4× the image) from the forward pass.
    top_left, right, below, below_right = _corners(image, flat)
    d_dx = (1 - fy_) * (right - top_left) + fy_ * (below_right - below)
    d_dy = (1 - fx_) * (below - top_left) + fx_ * (below_right - right)
    grad_flow = jnp.stack([_channel_dot(d_dx, grad_out), _channel_dot(d_dy, grad_out)], axis=-1)
    return grad_image, grad_flow.astype(fx.dtype) * inside


_warp.defvjp(_warp_fwd, _warp_bwd)


def backward_warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    """Sample `image [B,H,W,C]` at `(x + flow[..., 0], y + flow[..., 1])` (pixels) for every
    output pixel (y, x), bilinearly, with coordinates clamped to the image (border padding);
    → `[B,H,W,C]` in the image's dtype. Differentiable in both arguments (custom VJP)."""
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(
            f"backward_warp takes image [B,H,W,C] and flow [B,H,W,2]; got {image.shape} and "
            f"{flow.shape}"
        )
    if image.shape[:3] != flow.shape[:3]:
        raise ValueError(
            f"image {image.shape} and flow {flow.shape} must share batch, height and width"
        )
    if not jnp.issubdtype(flow.dtype, jnp.floating):
        flow = flow.astype(jnp.float32)
    return _warp(image, flow)
