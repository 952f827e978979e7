"""UNet stages: down / mid / up blocks, each with or without cross-attention transformers.

One class per direction covers diffusers' plain and `CrossAttn` variants (`DownBlock2D` and
`CrossAttnDownBlock2D` differ only in the transformers after each ResNet). `UNetMidBlock2D`
(ResNets with plain self-attention) is the VAE's middle.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.attention import Attention
from mv2_jax.models.remat import remat
from mv2_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from mv2_jax.models.transformer import Transformer2DModel


class _Stage(nn.Module):
    """Fields shared by every UNet stage; `transformer_layers` has one entry per ResNet, and
    a stage without cross-attention has `transformer_layers=None`. `remat_policy` (see
    `mv2_jax.models.remat`) recomputes each ResNet / transformer in the backward pass.
    `temporal` is the hook where video stages (`mv2_jax.models.motion`) add a layer over frames
    after each ResNet / transformer pair."""

    out_channels: int
    num_layers: int
    temb_channels: int | None
    transformer_layers: tuple[int, ...] | None = None
    num_attention_heads: int = 8
    cross_attention_dim: int | None = None
    only_cross_attention: bool = False
    resnet_eps: float = 1e-5
    resnet_groups: int = 32
    resnet_act_fn: str = "silu"
    resnet_time_scale_shift: str = "default"
    output_scale_factor: float = 1.0
    attention_implementation: str = "auto"
    remat_policy: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def resnet(self, i: int) -> ResnetBlock2D:
        return remat(ResnetBlock2D, self.remat_policy)(
            self.out_channels,
            temb_channels=self.temb_channels,
            groups=self.resnet_groups,
            eps=self.resnet_eps,
            act_fn=self.resnet_act_fn,
            time_embedding_norm=self.resnet_time_scale_shift,
            output_scale_factor=self.output_scale_factor,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"resnets_{i}",
        )

    def transformer(self, i: int) -> Transformer2DModel:
        return remat(Transformer2DModel, self.remat_policy)(
            num_attention_heads=self.num_attention_heads,
            attention_head_dim=self.out_channels // self.num_attention_heads,
            num_layers=self.transformer_layers[i],
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.resnet_groups,
            only_cross_attention=self.only_cross_attention,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"attentions_{i}",
        )

    def temporal(self, i: int, x: jax.Array) -> jax.Array:
        """After layer `i`: identity here, a motion module in the video stages."""
        return x


class DownBlock(_Stage):
    """`DownBlock2D` / `CrossAttnDownBlock2D`: returns the output and the skip connections."""

    add_downsample: bool = True
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, x, temb, context=None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        skips = []
        for i in range(self.num_layers):
            x = self.resnet(i)(x, temb)
            if self.transformer_layers is not None:
                x = self.transformer(i)(x, context)
            x = self.temporal(i, x)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(
                self.out_channels,
                padding=self.downsample_padding,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="downsamplers_0",
            )(x)
            skips.append(x)
        return x, tuple(skips)


class UpBlock(_Stage):
    """`UpBlock2D` / `CrossAttnUpBlock2D`: each ResNet first concatenates one skip connection."""

    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, skips, temb, context=None, upsample_size=None) -> jax.Array:
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self.resnet(i)(x, temb)
            if self.transformer_layers is not None:
                x = self.transformer(i)(x, context)
            x = self.temporal(i, x)
        if self.add_upsample:
            x = Upsample2D(
                self.out_channels,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="upsamplers_0",
            )(x, upsample_size)
        return x


class MidBlockCrossAttn(_Stage):
    """`UNetMidBlock2DCrossAttn`: ResNet, then (transformer, ResNet) × num_layers."""

    @nn.compact
    def __call__(self, x, temb, context=None) -> jax.Array:
        x = self.resnet(0)(x, temb)
        for i in range(self.num_layers):
            x = self.transformer(i)(x, context)
            x = self.temporal(i, x)
            x = self.resnet(i + 1)(x, temb)
        return x


class UNetMidBlock2D(_Stage):
    """`UNetMidBlock2D`: ResNet, then (self-attention with its own GroupNorm, ResNet) × layers.
    `attention_head_dim=None` means one head over all channels (the VAE)."""

    add_attention: bool = True
    attention_head_dim: int | None = None

    @nn.compact
    def __call__(self, x, temb=None) -> jax.Array:
        x = self.resnet(0)(x, temb)
        head_dim = self.attention_head_dim or self.out_channels
        for i in range(self.num_layers):
            if self.add_attention:
                b, h, w, c = x.shape
                attn = Attention(
                    c,
                    heads=c // head_dim,
                    dim_head=head_dim,
                    qkv_bias=True,
                    norm_num_groups=self.resnet_groups,
                    norm_eps=self.resnet_eps,
                    residual_connection=True,
                    rescale_output_factor=self.output_scale_factor,
                    attention_implementation=self.attention_implementation,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"attentions_{i}",
                )
                x = attn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
            x = self.resnet(i + 1)(x, temb)
        return x
