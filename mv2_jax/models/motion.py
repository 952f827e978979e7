"""`UNetMotionModel`: the SD UNet with AnimateDiff motion modules, videos `[B, F, H, W, C]`.

Spatial layers are those of `UNet2DConditionModel`, run on frames folded into the batch
(`[B·F, H, W, C]`); after each ResNet / transformer pair a motion module (a transformer over the F
frames of every pixel; AnimateDiff, Guo et al. 2023, arXiv:2307.04725) mixes information in time.
Fields and param names follow diffusers' `UNetMotionModel`, so its folders load directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.models.attention import Attention
from mv2_jax.models.config import module_from_config
from mv2_jax.models.layers import dense, group_norm, layer_norm
from mv2_jax.models.remat import remat
from mv2_jax.models.transformer import FeedForward
from mv2_jax.models.unet import UNet2DConditionModel, _per_block, _per_layer
from mv2_jax.models.unet_blocks import DownBlock, MidBlockCrossAttn, UpBlock, _Stage
from mv2_jax.parallel.sharding import constrain


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """`[length, dim]` fp32 table: sin at even channels, cos at odd ones, frequencies
    10000^(-2i/dim) (Vaswani et al. 2017, §3.5), as diffusers' `SinusoidalPositionalEmbedding`."""
    position = np.arange(length, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim))
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * freq)
    table[:, 1::2] = np.cos(position * freq)[:, : dim // 2]
    return table


class TemporalTransformerBlock(nn.Module):
    """diffusers' `BasicTransformerBlock` as AnimateDiff configures it, tokens `[N, F, C]`: two
    self-attentions (`attn1`, `attn2`; only `attn1` without `double_self_attention`, as in
    SparseCtrl), each on a LayerNorm output plus the sinusoidal frame positions, then the GEGLU
    feed-forward; pre-norm residuals throughout."""

    dim: int
    num_attention_heads: int
    attention_head_dim: int
    max_seq_length: int = 32
    norm_eps: float = 1e-5
    double_self_attention: bool = True
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        frames = x.shape[1]
        if frames > self.max_seq_length:
            raise ValueError(
                f"{frames} frames, but the motion modules have positions for at most "
                f"{self.max_seq_length} (motion_max_seq_length)"
            )
        positions = jnp.asarray(sinusoidal_positions(frames, self.dim), x.dtype)
        for i in (1, 2) if self.double_self_attention else (1,):
            h = layer_norm(self.norm_eps, name=f"norm{i}", **kw)(x) + positions
            x = x + Attention(
                self.dim,
                self.num_attention_heads,
                self.attention_head_dim,
                attention_implementation=self.attention_implementation,
                name=f"attn{i}",
                **kw,
            )(h)
        # tokens stay split by pixel through the feed-forward (issue 23: the partitioner
        # otherwise swapped frames and pixels in it)
        h = constrain(layer_norm(self.norm_eps, name="norm3", **kw)(x), ("video_rows",))
        return constrain(
            x + FeedForward(self.dim, activation_fn="geglu", name="ff", **kw)(h), ("video_rows",)
        )


class AnimateDiffTransformer3D(nn.Module):
    """A motion module: GroupNorm over (frames × pixels) per channel group → proj_in →
    temporal transformer blocks over the frames of each pixel → proj_out, plus the input.

    Takes and returns frames folded into the batch, `[B·F, H, W, C]` with `num_frames = F`."""

    num_attention_heads: int
    attention_head_dim: int
    num_frames: int
    num_layers: int = 1
    norm_num_groups: int = 32
    max_seq_length: int = 32
    double_self_attention: bool = True
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # Frames split as the spatial layers have them, up to the swap below: without it the
        # pixel split of the swap propagated back into the spatial layers, which then swapped
        # layouts in their own feed-forwards and norms (benchmarks/plan.py, issue 23).
        x = constrain(x, ("video_rows",))
        n, height, width, channels = x.shape
        frames = self.num_frames
        batch = n // frames
        h = x.reshape(batch, frames, height, width, channels)
        h = group_norm(self.norm_num_groups, 1e-6, name="norm", **kw)(h)
        # Still frames split after the norm, so that the swap below moves its output in the
        # compute dtype: unconstrained, the partitioner swapped the fp32 normalised values
        # before their cast (forward) and their gradient (backward), twice the bytes in bf16.
        h = constrain(h.reshape(n, height, width, channels), ("video_rows",))
        h = h.reshape(batch, frames, height, width, channels)
        h = h.transpose(0, 2, 3, 1, 4).reshape(batch * height * width, frames, channels)
        h = constrain(h, ("video_rows",))  # frames gathered, pixels split (an all-to-all)
        inner = self.num_attention_heads * self.attention_head_dim
        h = dense(inner, ("embed", "embed"), name="proj_in", **kw)(h)
        for i in range(self.num_layers):
            h = TemporalTransformerBlock(
                inner,
                self.num_attention_heads,
                self.attention_head_dim,
                max_seq_length=self.max_seq_length,
                double_self_attention=self.double_self_attention,
                attention_implementation=self.attention_implementation,
                name=f"transformer_blocks_{i}",
                **kw,
            )(h)
        h = dense(channels, ("embed", "embed"), name="proj_out", **kw)(h)
        h = h.reshape(batch, height, width, frames, channels).transpose(0, 3, 1, 2, 4)
        return constrain(h.reshape(n, height, width, channels), ("video_rows",)) + x


class _MotionStage(_Stage):
    """A UNet stage whose layers are each followed by a motion module (`motion_modules_{i}`);
    `motion_transformer_layers` has one entry per layer."""

    num_frames: int = 1
    motion_num_attention_heads: int = 8
    motion_transformer_layers: tuple[int, ...] = ()
    motion_max_seq_length: int = 32
    motion_double_self_attention: bool = True

    def temporal(self, i: int, x: jax.Array) -> jax.Array:
        heads = self.motion_num_attention_heads
        return remat(AnimateDiffTransformer3D, self.remat_policy)(
            num_attention_heads=heads,
            attention_head_dim=self.out_channels // heads,
            num_frames=self.num_frames,
            num_layers=self.motion_transformer_layers[i],
            norm_num_groups=self.resnet_groups,
            max_seq_length=self.motion_max_seq_length,
            double_self_attention=self.motion_double_self_attention,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"motion_modules_{i}",
        )(x)


class DownBlockMotion(_MotionStage, DownBlock):
    """`DownBlockMotion` / `CrossAttnDownBlockMotion`: ResNet (→ transformer) → motion module."""


class UpBlockMotion(_MotionStage, UpBlock):
    """`UpBlockMotion` / `CrossAttnUpBlockMotion`: ResNet (→ transformer) → motion module."""


class MidBlockCrossAttnMotion(_MotionStage, MidBlockCrossAttn):
    """`UNetMidBlockCrossAttnMotion`: ResNet, then (transformer, motion module, ResNet) × layers."""


# diffusers' UNetMotionModel config keys with no effect here (as in diffusers: it never reads
# `reverse_motion_num_attention_heads`, and `encoder_hid_dim` only acts with a projection type).
_IGNORED = (
    "sample_size",
    "use_linear_projection",
    "reverse_motion_num_attention_heads",
    "encoder_hid_dim",
)


class UNetMotionModel(UNet2DConditionModel):
    """Video UNet. Call: `(sample[B,F,H,W,C], timesteps[B] or scalar, encoder_hidden_states[B,L,D]
    (shared by all frames), added_cond_kwargs=None, down_block_additional_residuals=None,
    mid_block_additional_residual=None, class_labels=None, *, timestep_cond=None) → [B,F,H,W,C']`.

    `class_labels[B]` feed the class embedding (any `class_embed_type` of the 2D UNet; with
    `num_class_embeds` a table indexed by integer labels, as the SD x4 upscaler's noise level),
    once per video like the timestep. diffusers' `UNetMotionModel` has no class embedding.
    `timestep_cond[B, time_cond_proj_dim]` (LCM's guidance embedding) is per video too.

    Residuals may be per video `[B,F,h,w,c]` or per frame `[B·F,h,w,c]`. At F=1 the motion
    modules run over a single frame, as in diffusers; `skip_motion_for_images=True` skips them
    instead, so that an image is exactly the spatial UNet's output (image-video joint training).
    """

    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "DownBlockMotion",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockMotion",
        "CrossAttnUpBlockMotion",
        "CrossAttnUpBlockMotion",
        "CrossAttnUpBlockMotion",
    )
    num_attention_heads: int | tuple[int, ...] | None = 8
    temporal_transformer_layers_per_block: int | tuple = 1
    reverse_temporal_transformer_layers_per_block: int | tuple | None = None
    transformer_layers_per_mid_block: int | tuple[int, ...] | None = None
    temporal_transformer_layers_per_mid_block: int | tuple[int, ...] = 1
    motion_max_seq_length: int = 32
    motion_num_attention_heads: int | tuple[int, ...] = 8
    use_motion_mid_block: bool = True
    mid_block_layers: int = 1
    skip_motion_for_images: bool = False

    _down_types: ClassVar[Mapping[str, bool]] = {
        "DownBlockMotion": False,
        "CrossAttnDownBlockMotion": True,
    }
    _up_types: ClassVar[Mapping[str, bool]] = {
        "UpBlockMotion": False,
        "CrossAttnUpBlockMotion": True,
    }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> UNetMotionModel:
        return module_from_config(cls, config, ignored=_IGNORED, **overrides)

    def _check(self):
        super()._check()
        if self.encoder_hid_dim_type not in (None, "ip_image_proj"):
            raise NotImplementedError(
                f"UNetMotionModel: encoder_hid_dim_type {self.encoder_hid_dim_type!r} "
                "(diffusers builds no projection for it either)"
            )
        if self.act_fn not in ("silu", "swish"):
            # diffusers' motion UNet applies SiLU before conv_out whatever act_fn says
            raise NotImplementedError(f"UNetMotionModel: act_fn {self.act_fn!r}; supported: silu")
        unsupported = {
            "mid_block_type": (self.mid_block_type, "UNetMidBlock2DCrossAttn"),
            "time_embedding_type": (self.time_embedding_type, "positional"),
        }
        for key, (value, default) in unsupported.items():
            if value != default:
                raise NotImplementedError(f"UNetMotionModel: {key}={value!r}")

    def _stage(self, kind: str, index: int, num_frames: int, **fields) -> nn.Module:
        if self.skip_motion_for_images and num_frames == 1:
            return super()._stage(kind, index, num_frames, **fields)
        n = len(self.block_out_channels)
        heads = _per_block(self.motion_num_attention_heads, n)
        if kind == "mid":
            spatial = self.transformer_layers_per_mid_block
            if spatial is None:
                last = _per_block(self.transformer_layers_per_block, n)[-1]
                spatial = last if isinstance(last, int) else 1
            layers = self.mid_block_layers
            fields.update(num_layers=layers, transformer_layers=_per_layer(spatial, layers))
            if not self.use_motion_mid_block:
                return MidBlockCrossAttn(**fields)
            cls, block = MidBlockCrossAttnMotion, n - 1
            temporal = self.temporal_transformer_layers_per_mid_block
        elif kind == "down":
            cls, block = DownBlockMotion, index
            temporal = _per_block(self.temporal_transformer_layers_per_block, n)[index]
        else:
            cls, block = UpBlockMotion, n - 1 - index
            reverse = self.reverse_temporal_transformer_layers_per_block
            if reverse is None:
                reverse = tuple(reversed(_per_block(self.temporal_transformer_layers_per_block, n)))
            temporal = _per_block(reverse, n)[index]
        return cls(
            **fields,
            num_frames=num_frames,
            motion_num_attention_heads=heads[block],
            motion_transformer_layers=_per_layer(temporal, fields["num_layers"]),
            motion_max_seq_length=self.motion_max_seq_length,
        )

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        encoder_hidden_states: jax.Array,
        added_cond_kwargs: Mapping[str, jax.Array] | None = None,
        down_block_additional_residuals: Sequence[jax.Array] | None = None,
        mid_block_additional_residual: jax.Array | None = None,
        class_labels: jax.Array | None = None,
        *,
        timestep_cond: jax.Array | None = None,
    ) -> jax.Array:
        self._check()
        if sample.ndim != 5:
            raise ValueError(f"UNetMotionModel takes videos [B,F,H,W,C], got shape {sample.shape}")
        batch, frames = sample.shape[:2]
        # Embeddings (time, class labels such as V2V's noise level) once per video, then one copy
        # per frame (frames are folded into the batch).
        emb, context = self._embed(
            sample[:, 0],
            timesteps,
            encoder_hidden_states,
            added_cond_kwargs,
            class_labels,
            timestep_cond,
        )
        # (an IP-Adapter's `ImagePromptContext` too: every leaf has the batch first)
        emb, context = jax.tree.map(
            lambda c: constrain(jnp.repeat(c, frames, axis=0), ("video_rows",)), (emb, context)
        )

        def fold(x):  # [B,F,...] → [B·F,...], frames split over the mesh's `frames` axis
            x = x.reshape(batch * frames, *x.shape[2:]) if x.ndim == 5 else x
            return constrain(x, ("video_rows",))

        if down_block_additional_residuals is not None:
            down_block_additional_residuals = [fold(r) for r in down_block_additional_residuals]
        if mid_block_additional_residual is not None:
            mid_block_additional_residual = fold(mid_block_additional_residual)
        out = self._denoise(
            fold(sample),
            emb,
            context,
            down_block_additional_residuals,
            mid_block_additional_residual,
            num_frames=frames,
        )
        return out.reshape(batch, frames, *out.shape[1:])
