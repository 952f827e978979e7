"""A PatchGAN discriminator (Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks", arXiv:1611.07004): stride-2 4×4 convs with LeakyReLU and one logit per
overlapping patch, so it judges local texture (ghosting, blur) rather than the whole frame.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.conv import Conv


class PatchDiscriminator(nn.Module):
    """`apply({"params": p}, images [B,H,W,C])` → logits `[B, H/2^n, W/2^n, 1]` for n =
    `len(channels)` stride-2 layers (then one 3×3 conv to a logit). Any C: a conditional
    discriminator takes the candidate frame concatenated with its neighbours on channels."""

    channels: tuple[int, ...] = (32, 64, 128)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"PatchDiscriminator takes [B,H,W,C] images; got {images.shape}")
        factor = 2 ** len(self.channels)
        if images.shape[1] % factor or images.shape[2] % factor:
            raise ValueError(
                f"PatchDiscriminator: height and width must be multiples of {factor}; "
                f"got {images.shape[1]}×{images.shape[2]}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = images.astype(self.dtype)
        for i, features in enumerate(self.channels):
            x = Conv(features, (4, 4), (2, 2), ((1, 1), (1, 1)), name=f"conv_{i}", **kw)(x)
            x = nn.leaky_relu(x, 0.2)
        logits = Conv(1, (3, 3), (1, 1), ((1, 1), (1, 1)), name="conv_out", **kw)(x)
        return logits.astype(jnp.float32)
