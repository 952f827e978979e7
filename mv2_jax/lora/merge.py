"""Fusing bound LoRAs into params: per param, one jitted
`W + Σᵢ scaleᵢ·(alphaᵢ/rankᵢ)·T(upᵢ @ downᵢ)` (T the transform the base weight takes), the delta
in fp32, the sum cast once to W's dtype.

The output keeps W's sharding and is computed where W's shards are, so a sharded UNet is never
gathered on one device; the scales are traced arguments, so a new scale reuses the compiled
update (one compile per param shape, sharding and adapter ranks). The input params are never
changed: keep them to unfuse bit-exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mv2_jax.lora.resolve import BoundLora, LoraUpdate
from mv2_jax.weights.mapping import TRANSFORMS

# (a bound adapter, its scale): what `merge_lora` and `lora_deltas` take, stacked in order.
Scaled = tuple[BoundLora, float]


def merge_lora(params: Mapping, loras: Sequence[Scaled]) -> dict:
    """`params` with every adapter of `loras` fused in at its scale; params no adapter updates
    are the same arrays as in `params`."""
    flat = traverse_util.flatten_dict(dict(params))
    for path, (w, updates, scales) in _by_param(flat, loras).items():
        flat[path] = _update_fn(_signature(updates), _sharding_of(w), fused=True)(
            w, *_factors(updates), scales
        )
    return traverse_util.unflatten_dict(flat)


def lora_deltas(params: Mapping, loras: Sequence[Scaled]) -> dict[tuple[str, ...], jax.Array]:
    """`{flax path: Σ scaleᵢ·(alphaᵢ/rankᵢ)·T(upᵢ @ downᵢ)}` in fp32, each with its param's
    sharding, for callers that add / subtract them themselves (fusing adds them in W's dtype:
    `merge_lora`)."""
    flat = traverse_util.flatten_dict(dict(params))
    return {
        path: _update_fn(_signature(updates), _sharding_of(w), fused=False)(
            w, *_factors(updates), scales
        )
        for path, (w, updates, scales) in _by_param(flat, loras).items()
    }


def _by_param(flat: Mapping, loras: Sequence[Scaled]) -> dict:
    """`{path: (W, [LoraUpdate…], scales [n] fp32)}`, the adapters in the given order."""
    grouped: dict[tuple[str, ...], tuple[list, list]] = {}
    for bound, scale in loras:
        for path, update in bound.updates.items():
            if path not in flat:
                raise KeyError(
                    f"{bound.source}: bound to a param tree with {'/'.join(path)}, which these "
                    f"params lack; resolve it against the params it is merged into"
                )
            updates, scales = grouped.setdefault(path, ([], []))
            updates.append(update)
            scales.append(float(scale) * update.multiplier)
    return {
        path: (flat[path], updates, np.asarray(scales, np.float32))
        for path, (updates, scales) in grouped.items()
    }


def _factors(updates: Sequence[LoraUpdate]) -> tuple[tuple, tuple]:
    return tuple(u.down for u in updates), tuple(u.up for u in updates)


def _signature(updates: Sequence[LoraUpdate]) -> tuple[str, ...]:
    return tuple(u.transform for u in updates)


def _sharding_of(w):
    return getattr(w, "sharding", None)


@functools.cache
def _update_fn(transforms: tuple[str, ...], sharding, fused: bool):
    """The jitted update for params whose adapters take these transforms; shapes and ranks are
    jit's cache key, the scales an argument."""

    def update(w, downs, ups, scales):
        delta = jnp.zeros((), jnp.float32)
        for i, (name, down, up) in enumerate(zip(transforms, downs, ups)):
            up = up.astype(jnp.float32).reshape(up.shape[:2])  # [out, r, 1, 1] → [out, r]
            product = jnp.tensordot(
                up, down.astype(jnp.float32), axes=1, precision=jax.lax.Precision.HIGHEST
            )  # [out, in, *window], the PyTorch layout
            delta = delta + scales[i] * TRANSFORMS[name](product)
        if not fused:
            return delta
        return (jnp.asarray(w).astype(jnp.float32) + delta).astype(w.dtype)

    kwargs = {} if sharding is None else {"out_shardings": sharding}
    return jax.jit(update, **kwargs)
