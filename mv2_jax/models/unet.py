"""`UNet2DConditionModel`: the SD1.x / SD2.x / SDXL denoiser, channels-last, diffusers' config.

Fields carry diffusers' config names, so `UNet2DConditionModel.from_config(config_json)` builds
the same network. `attention_head_dim` keeps diffusers' historical meaning: it is the number of
heads per block unless `num_attention_heads` is given (diffusers issue #2011).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.config import module_from_config
from mv2_jax.models.embeddings import (
    GaussianFourierProjection,
    TimestepEmbedding,
    timestep_embedding,
)
from mv2_jax.models.ip_adapter import image_prompt_context
from mv2_jax.models.layers import activation, conv, dense, embed, group_norm
from mv2_jax.models.unet_blocks import DownBlock, MidBlockCrossAttn, UNetMidBlock2D, UpBlock
from mv2_jax.parallel.sharding import constrain

_DOWN_TYPES = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
_MID_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)

# Config keys of diffusers' UNet2DConditionModel that this implementation does not act on:
# these only matter for block types it rejects, or are applied by construction
# (linear vs 1×1-conv projections are the same map; scores are always fp32 = upcast).
_IGNORED = (
    "sample_size",
    "dropout",
    "use_linear_projection",
    "upcast_attention",
    "resnet_skip_time_act",
    "resnet_out_scale_factor",
    "mid_block_only_cross_attention",
    "addition_embed_type_num_heads",
)
_INACTIVE = {
    "dual_cross_attention": False,
    "attention_type": "default",
    "cross_attention_norm": None,
}


def _per_block(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, Sequence) else (value,) * n


def _per_layer(value, n_layers: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value,) * n_layers


class _BlockSettings(NamedTuple):
    heads: tuple
    cross_dims: tuple
    layers: tuple
    only_cross: tuple
    tlayers: tuple
    reverse_tlayers: tuple


class UNet2DConditionModel(nn.Module):
    """Conditional UNet. Call: `(sample[B,H,W,C], timesteps[B] or scalar,
    encoder_hidden_states[B,L,D], added_cond_kwargs=None, down_block_additional_residuals=None,
    mid_block_additional_residual=None, class_labels=None, timestep_cond=None) → [B,H,W,C']`.

    With `time_cond_proj_dim` (guidance-distilled LCM checkpoints) `timestep_cond[B,
    time_cond_proj_dim]` is the guidance-scale embedding (`mv2_jax.diffusion.guidance.
    guidance_scale_embedding`), added to the timestep features through `time_embedding.cond_proj`;
    without it nothing is added, as diffusers skips cond_proj for `timestep_cond=None`."""

    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple = 1
    reverse_transformer_layers_per_block: tuple | None = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    # Image tokens per image of the IP-Adapter (`encoder_hid_dim_type="ip_image_proj"`, with
    # `encoder_hid_dim` the image embedding width); see `mv2_jax.weights.ip_adapter`.
    ip_adapter_num_tokens: int = 4
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    resnet_time_scale_shift: str = "default"
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    class_embeddings_concat: bool = False
    attention_implementation: str = "auto"
    remat_policy: str = "none"  # training only: see mv2_jax.models.remat
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> UNet2DConditionModel:
        return module_from_config(cls, config, inactive=_INACTIVE, ignored=_IGNORED, **overrides)

    def _check(self):
        n = len(self.down_block_types)
        if len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ValueError(
                "down_block_types, up_block_types and block_out_channels differ in length"
            )
        for kind, known in (("down", self._down_types), ("up", self._up_types)):
            for t in getattr(self, f"{kind}_block_types"):
                if t not in known:
                    raise NotImplementedError(f"{kind} block type {t!r}; supported: {list(known)}")
        if self.mid_block_type not in _MID_TYPES:
            raise NotImplementedError(
                f"mid_block_type {self.mid_block_type!r}; supported: {_MID_TYPES}"
            )
        if self.encoder_hid_dim_type not in (None, "text_proj", "ip_image_proj"):
            raise NotImplementedError(f"encoder_hid_dim_type {self.encoder_hid_dim_type!r}")
        if self.encoder_hid_dim_type == "ip_image_proj" and any(
            _per_block(self.only_cross_attention, 1)
        ):
            raise NotImplementedError("IP-Adapter with only_cross_attention")
        if self.addition_embed_type not in (None, "text_time"):
            raise NotImplementedError(f"addition_embed_type {self.addition_embed_type!r}")

    def _time_embed_dims(self) -> tuple[int, int]:
        """(time_embed_dim, timestep_input_dim) as diffusers' `_set_time_proj` computes them."""
        if self.time_embedding_type == "fourier":
            dim = self.time_embedding_dim or self.block_out_channels[0] * 2
            return dim, dim
        if self.time_embedding_type == "positional":
            return self.time_embedding_dim or self.block_out_channels[
                0
            ] * 4, self.block_out_channels[0]
        raise ValueError(f"time_embedding_type {self.time_embedding_type!r}")

    def _time_proj(self, input_dim: int):
        """`[N] → [N, input_dim]` fp32 features of timesteps (also of class labels, "timestep")."""
        if self.time_embedding_type == "fourier":
            return GaussianFourierProjection(
                input_dim // 2,
                flip_sin_to_cos=self.flip_sin_to_cos,
                param_dtype=self.param_dtype,
                name="time_proj",
            )
        return lambda t: timestep_embedding(
            t, input_dim, flip_sin_to_cos=self.flip_sin_to_cos, downscale_freq_shift=self.freq_shift
        )

    def _embed(
        self,
        sample,
        timesteps,
        encoder_hidden_states,
        added_cond_kwargs,
        class_labels,
        timestep_cond,
    ):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch = sample.shape[0]
        time_dim, input_dim = self._time_embed_dims()
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
        time_proj = self._time_proj(input_dim)
        t_emb = time_proj(t).astype(self.dtype)
        emb = TimestepEmbedding(
            time_dim,
            act_fn=self.act_fn,
            post_act_fn=self.timestep_post_act,
            cond_proj_dim=self.time_cond_proj_dim,
            name="time_embedding",
            **kw,
        )(t_emb, timestep_cond)
        class_emb = self._class_embed(class_labels, time_dim, time_proj)
        if class_emb is not None:
            class_emb = class_emb.astype(emb.dtype)
            emb = (
                jnp.concatenate([emb, class_emb], -1)
                if self.class_embeddings_concat
                else emb + class_emb
            )
        if self.addition_embed_type == "text_time":
            if not added_cond_kwargs or not {"text_embeds", "time_ids"} <= set(added_cond_kwargs):
                raise ValueError(
                    "this UNet uses SDXL micro-conditioning: pass added_cond_kwargs="
                    "{'text_embeds': [B, D], 'time_ids': [B, 6]}"
                )
            text_embeds = added_cond_kwargs["text_embeds"]
            time_ids = jnp.asarray(added_cond_kwargs["time_ids"], jnp.float32)
            time_embeds = timestep_embedding(
                time_ids.reshape(-1),
                self.addition_time_embed_dim,
                flip_sin_to_cos=self.flip_sin_to_cos,
                downscale_freq_shift=self.freq_shift,
            )
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
            add = jnp.concatenate([text_embeds, time_embeds], axis=-1).astype(emb.dtype)
            emb = emb + TimestepEmbedding(time_dim, name="add_embedding", **kw)(add)
        if self.time_embedding_act_fn is not None:
            emb = activation(self.time_embedding_act_fn)(emb)
        if self.encoder_hid_dim_type == "text_proj":
            cross = _per_block(self.cross_attention_dim, 1)[0]
            encoder_hidden_states = dense(cross, name="encoder_hid_proj", **kw)(
                encoder_hidden_states
            )
        elif self.encoder_hid_dim_type == "ip_image_proj":
            encoder_hidden_states = image_prompt_context(
                encoder_hidden_states,
                added_cond_kwargs,
                cross_attention_dim=_per_block(self.cross_attention_dim, 1)[0],
                num_tokens=self.ip_adapter_num_tokens,
                **kw,
            )
        return emb, encoder_hidden_states

    def _class_embed(self, class_labels, time_dim, time_proj):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kind = self.class_embed_type
        if kind is None and self.num_class_embeds is None:
            return None
        if class_labels is None:
            raise ValueError(
                f"this UNet has class embeddings ({kind or 'table'}): pass class_labels"
            )
        if kind is None:
            return embed(self.num_class_embeds, time_dim, name="class_embedding", **kw)(
                class_labels
            )
        if kind == "timestep":
            labels = time_proj(jnp.asarray(class_labels).reshape(-1)).astype(self.dtype)
            return TimestepEmbedding(time_dim, act_fn=self.act_fn, name="class_embedding", **kw)(
                labels
            )
        if kind == "identity":
            return class_labels
        if kind == "projection":
            return TimestepEmbedding(time_dim, name="class_embedding", **kw)(class_labels)
        if kind == "simple_projection":
            return dense(time_dim, name="class_embedding", **kw)(class_labels)
        raise NotImplementedError(f"class_embed_type {kind!r}")

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
        timestep_cond: jax.Array | None = None,
    ) -> jax.Array:
        self._check()
        emb, context = self._embed(
            sample, timesteps, encoder_hidden_states, added_cond_kwargs, class_labels, timestep_cond
        )
        return self._denoise(
            sample, emb, context, down_block_additional_residuals, mid_block_additional_residual
        )

    # Block type name → has cross-attention transformers; subclasses name their own blocks.
    _down_types: ClassVar[Mapping[str, bool]] = _DOWN_TYPES
    _up_types: ClassVar[Mapping[str, bool]] = _UP_TYPES

    def _stage(self, kind: str, index: int, num_frames: int, **fields) -> nn.Module:
        """Down / mid / up stage `index` built from `fields`: the hook through which
        `UNetMotionModel` swaps in stages with temporal layers over `num_frames` frames."""
        return {"down": DownBlock, "mid": MidBlockCrossAttn, "up": UpBlock}[kind](**fields)

    def _blocks(self) -> _BlockSettings:
        """Per-block settings, each config value expanded to one entry per block."""
        n = len(self.down_block_types)
        tlayers = _per_block(self.transformer_layers_per_block, n)
        return _BlockSettings(
            heads=_per_block(self.num_attention_heads or self.attention_head_dim, n),
            cross_dims=_per_block(self.cross_attention_dim, n),
            layers=_per_block(self.layers_per_block, n),
            only_cross=_per_block(self.only_cross_attention, n),
            tlayers=tlayers,
            reverse_tlayers=self.reverse_transformer_layers_per_block or tuple(reversed(tlayers)),
        )

    def _stage_fields(self, temb_channels: int) -> dict[str, Any]:
        """The fields every stage shares."""
        return dict(
            temb_channels=temb_channels,
            resnet_eps=self.norm_eps,
            resnet_groups=self.norm_num_groups,
            resnet_act_fn=self.act_fn,
            resnet_time_scale_shift=self.resnet_time_scale_shift,
            remat_policy=self.remat_policy,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_implementation=self.attention_implementation,
        )

    def _conv_in(self, sample: jax.Array) -> jax.Array:
        sample = sample.astype(self.dtype)
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        return conv(
            self.block_out_channels[0],
            self.conv_in_kernel,
            padding=(self.conv_in_kernel - 1) // 2,
            name="conv_in",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(sample)

    def _down(
        self, x: jax.Array, emb: jax.Array, context: jax.Array, num_frames: int = 1
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Down stages on `x` (conv_in's output) → (output, skips); the skips start with `x`.
        Shared with the ControlNets (`mv2_jax.models.controlnet`), which copy this path."""
        n, channels, blocks = len(self.down_block_types), self.block_out_channels, self._blocks()
        skips = [x]
        for i, block_type in enumerate(self.down_block_types):
            x, block_skips = self._stage(
                "down",
                i,
                num_frames,
                out_channels=channels[i],
                num_layers=blocks.layers[i],
                transformer_layers=_per_layer(blocks.tlayers[i], blocks.layers[i])
                if self._down_types[block_type]
                else None,
                num_attention_heads=blocks.heads[i],
                cross_attention_dim=blocks.cross_dims[i],
                only_cross_attention=blocks.only_cross[i],
                add_downsample=i < n - 1,
                downsample_padding=self.downsample_padding,
                name=f"down_blocks_{i}",
                **self._stage_fields(emb.shape[-1]),
            )(x, emb, context)
            skips.extend(block_skips)
        return x, skips

    def _mid(self, x: jax.Array, emb: jax.Array, context: jax.Array, num_frames: int = 1):
        """The mid block (identity for `mid_block_type=None`)."""
        blocks, stage = self._blocks(), self._stage_fields(emb.shape[-1])
        if self.mid_block_type == "UNetMidBlock2DCrossAttn":
            return self._stage(
                "mid",
                0,
                num_frames,
                out_channels=self.block_out_channels[-1],
                num_layers=1,
                transformer_layers=_per_layer(blocks.tlayers[-1], 1)[:1],
                num_attention_heads=blocks.heads[-1],
                cross_attention_dim=blocks.cross_dims[-1],
                output_scale_factor=self.mid_block_scale_factor,
                name="mid_block",
                **stage,
            )(x, emb, context)
        if self.mid_block_type == "UNetMidBlock2D":
            return UNetMidBlock2D(
                self.block_out_channels[-1],
                0,
                add_attention=False,
                output_scale_factor=self.mid_block_scale_factor,
                name="mid_block",
                **stage,
            )(x, emb)
        return x

    def _denoise(
        self,
        sample: jax.Array,
        emb: jax.Array,
        context: jax.Array,
        down_block_additional_residuals: Sequence[jax.Array] | None,
        mid_block_additional_residual: jax.Array | None,
        num_frames: int = 1,
    ) -> jax.Array:
        """conv_in → down → mid → up → conv_out on `sample[N,H,W,C]` given the embeddings."""
        n = len(self.down_block_types)
        channels = self.block_out_channels
        blocks = self._blocks()
        heads, cross_dims, layers = blocks.heads, blocks.cross_dims, blocks.layers
        only_cross, reverse_tlayers = blocks.only_cross, blocks.reverse_tlayers
        stage = self._stage_fields(emb.shape[-1])

        # Rows (images, or a video's frames) split over the mesh from the start: conv_in's input
        # has 4 channels, so the partitioner otherwise followed its weight's channel split into
        # the first block (activations all-reduced there; benchmarks/plan.py, issue 23).
        x = constrain(self._conv_in(sample), ("video_rows",))
        x, skips = self._down(x, emb, context, num_frames)

        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(
                    f"down_block_additional_residuals: expected {len(skips)} tensors, "
                    f"got {len(down_block_additional_residuals)}"
                )
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]

        x = self._mid(x, emb, context, num_frames)
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual

        # Latents that do not halve evenly (75 → 38 → 19 → 10) upsample to the skip's size.
        uneven = any(d % 2 ** (n - 1) for d in sample.shape[1:3])
        for i, block_type in enumerate(self.up_block_types):
            j = n - 1 - i  # the matching down block
            n_layers = layers[j] + 1
            block_skips, skips = skips[-n_layers:], skips[:-n_layers]
            last = i == n - 1
            x = self._stage(
                "up",
                i,
                num_frames,
                out_channels=channels[j],
                num_layers=n_layers,
                transformer_layers=_per_layer(reverse_tlayers[i], n_layers)
                if self._up_types[block_type]
                else None,
                num_attention_heads=heads[j],
                cross_attention_dim=cross_dims[j],
                only_cross_attention=only_cross[j],
                add_upsample=not last,
                name=f"up_blocks_{i}",
                **stage,
            )(
                x,
                block_skips,
                emb,
                context,
                upsample_size=tuple(skips[-1].shape[1:3]) if uneven and not last else None,
            )

        x = group_norm(
            self.norm_num_groups,
            self.norm_eps,
            name="conv_norm_out",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)
        x = activation(self.act_fn)(x)
        pad = (self.conv_out_kernel - 1) // 2
        return conv(
            self.out_channels,
            self.conv_out_kernel,
            padding=pad,
            name="conv_out",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)
