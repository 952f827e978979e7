"""Overlapping-tile processing with seams blended by linear ramps, as diffusers' tiled VAE does.

`tiled_map` runs a model on tiles of a large image one tile shape at a time and stitches the
outputs, so peak memory follows the tile size, not the image size.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def ramp_blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """diffusers' `blend_v` (axis 1) / `blend_h` (axis 2): the first `extent` rows (columns) of
    `b` ramp linearly from `a`'s last ones to `b`'s own, so a seam has no step."""
    e = min(a.shape[axis], b.shape[axis], extent)
    if e <= 0:
        return b
    ramp = np.arange(e) / e  # float64 then one cast, as torch does with Python-float weights
    shape = [1] * b.ndim
    shape[axis] = e
    keep_a = jnp.asarray((1 - ramp).reshape(shape), b.dtype)
    take_b = jnp.asarray(ramp.reshape(shape), b.dtype)
    n_a, n_b = a.shape[axis], b.shape[axis]
    head = jax.lax.slice_in_dim(a, n_a - e, n_a, axis=axis) * keep_a
    head = head + jax.lax.slice_in_dim(b, 0, e, axis=axis) * take_b
    return jnp.concatenate([head, jax.lax.slice_in_dim(b, e, n_b, axis=axis)], axis=axis)


def tiled_map(
    run: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    tile: int,
    stride: int,
    blend: int,
    keep: int,
) -> jax.Array:
    """diffusers' tiling: tiles of `tile`² start every `stride` rows / columns of `x[B,H,W,C]`
    (edge tiles are cut short); `run` maps a stack `[n,B,h,w,C]` of same-shaped tiles to their
    outputs (one tile at a time to bound memory, e.g. with `jax.lax.map`); then, in raster
    order, each output tile is blended into its (already blended) upper and left neighbours
    over `blend` pixels and cropped to `keep`² before concatenation."""
    rows, cols = range(0, x.shape[1], stride), range(0, x.shape[2], stride)
    groups: dict[tuple, list] = {}  # one `run` per tile shape: the interior's and a few edges'
    for i, y0 in enumerate(rows):
        for j, x0 in enumerate(cols):
            t = x[:, y0 : y0 + tile, x0 : x0 + tile]
            groups.setdefault(t.shape, []).append(((i, j), t))
    out = {}
    for items in groups.values():
        results = run(jnp.stack([t for _, t in items]))
        out.update({ij: results[k] for k, (ij, _) in enumerate(items)})
    stitched = []
    for i in range(len(rows)):
        row = []
        for j in range(len(cols)):
            t = out[i, j]
            if i > 0:
                t = ramp_blend(out[i - 1, j], t, blend, axis=1)
            if j > 0:
                t = ramp_blend(out[i, j - 1], t, blend, axis=2)
            out[i, j] = t
            row.append(t[:, :keep, :keep])
        stitched.append(jnp.concatenate(row, axis=2))
    return jnp.concatenate(stitched, axis=1)
