"""Appearance encoder: the key image enters the video UNet through its self-attention.

MagicVideo-V2 (Wang et al. 2024, arXiv:2401.04468, §2) conditions the I2V UNet on the key image
with an appearance encoder; we build it as *reference attention* (the "reference-only" idea of
ControlNet's authors, and Animate Anyone's ReferenceNet, Hu et al. 2023, arXiv:2311.17117):

1. A spatial UNet of the video UNet's shape — initialised from its spatial weights, trainable
   on its own — runs once per video on the clean reference latent (timestep 0) and records the
   input of every spatial self-attention (`attn1`): `hidden [B, N, C]` per transformer block.
2. In every frame of the video UNet, each `attn1` then attends to its own N tokens followed by
   the N reference tokens of the same block; keys of the reference carry `log(scale)` as a
   bias, so `scale` multiplies their attention weight (1 = plain concatenation, 0 = off).

The features travel in the flax variable collection `reference` (`transformer.REFERENCE`),
keyed by the blocks' module paths, which are the same in both UNets; nothing in the UNets'
call signatures changes, and the encoder runs outside the sampler's loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.models.transformer import REFERENCE


def appearance_encoder(unet: nn.Module) -> nn.Module:
    """The spatial UNet that encodes the reference for `unet`: for a `UNetMotionModel` the same
    module with `skip_motion_for_images=True` (at one frame that is the 2D UNet exactly, with
    the same param paths); a 2D UNet encodes for itself."""
    if isinstance(unet, UNetMotionModel):
        return unet.clone(skip_motion_for_images=True, parent=None)
    return unet.clone(parent=None)


def spatial_params(params: Mapping[str, Any]) -> dict:
    """`params` without the motion modules: the appearance encoder's initial weights."""
    return {
        name: spatial_params(value) if isinstance(value, Mapping) else value
        for name, value in params.items()
        if not name.startswith("motion_modules_")
    }


def encode_reference(
    encoder: nn.Module,
    params: Mapping[str, Any],
    reference_latents: jax.Array,
    encoder_hidden_states: jax.Array,
    added_cond_kwargs: Mapping[str, jax.Array] | None = None,
    timestep: jax.Array | float = 0.0,
) -> dict:
    """Reference features of `reference_latents [B,h,w,C]` (scaled VAE latents), one
    `{"hidden": [B, N, C]}` per spatial transformer block, for `with_reference_scale`."""
    if reference_latents.ndim != 4:
        raise ValueError(
            f"reference latents must be [B,h,w,C], got shape {reference_latents.shape}"
        )
    batch = reference_latents.shape[0]
    sample = (
        reference_latents[:, None] if isinstance(encoder, UNetMotionModel) else reference_latents
    )
    timesteps = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (batch,))
    _, state = encoder.apply(
        {"params": params},
        sample,
        timesteps,
        encoder_hidden_states,
        added_cond_kwargs,
        mutable=[REFERENCE],
    )
    if REFERENCE not in state:
        raise ValueError("the appearance encoder has no spatial transformer blocks to record")
    return state[REFERENCE]


def with_reference_scale(reference: Mapping[str, Any], scale: jax.Array | float) -> dict:
    """`reference` with its weight set in every block: `scale` (traced or not) multiplies the
    attention weight of the reference keys; 0 switches reference attention off exactly."""
    scale = jnp.asarray(scale, jnp.float32)
    log_scale = jnp.where(scale > 0, jnp.log(jnp.where(scale > 0, scale, 1.0)), -1e30)

    def visit(node):
        if "hidden" in node:
            return {"hidden": node["hidden"], "log_scale": log_scale}
        return {name: visit(child) for name, child in node.items()}

    return visit(reference)


def tile_reference(reference: Mapping[str, Any], copies: int) -> dict:
    """The reference repeated `copies` times along the batch, e.g. 2 for the unconditional and
    conditional halves of a classifier-free-guidance batch `[uncond videos; cond videos]`."""
    return jax.tree.map(
        lambda x: jnp.concatenate([x] * copies, axis=0) if x.ndim else x, dict(reference)
    )
