"""ControlNets: a trainable copy of the UNet's encoder that turns a condition into residuals for
the UNet's skip connections and mid block (Zhang et al. 2023, arXiv:2302.05543).

`ControlNetModel` (SD ControlNet, pixel-space condition) and `SparseControlNetModel` (SparseCtrl,
Guo et al. 2023, arXiv:2311.16933: a video ControlNet with motion modules, conditioned on a few
frames) reuse the UNets' own embedding, conv_in, down and mid paths; what is theirs is the
condition embedding and the zero-initialised 1×1 convs on every output. Fields and param names
follow diffusers, so its folders load directly (`mv2_jax.weights.controlnet`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.config import module_from_config
from mv2_jax.models.layers import conv
from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.models.unet import _DOWN_TYPES, UNet2DConditionModel

_ZEROS = nn.initializers.zeros_init()
# Config keys with no effect here (projections and upcasting are applied by construction;
# `addition_embed_type_num_heads` only acts for the "text" type, which is rejected).
_IGNORED = ("sample_size", "use_linear_projection", "upcast_attention")


class ControlNetConditioningEmbedding(nn.Module):
    """Condition `[N,H,W,C]` → `[N,H/2^k,W/2^k,channels]`: 3×3 convs with SiLU, each stage but the
    first ending in a stride-2 conv (k = len(block_out_channels) − 1), then a zero-init conv."""

    conditioning_embedding_channels: int
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = self.block_out_channels
        x = nn.silu(conv(channels[0], 3, name="conv_in", **kw)(x))
        for i in range(len(channels) - 1):
            x = nn.silu(conv(channels[i], 3, name=f"blocks_{2 * i}", **kw)(x))
            x = nn.silu(conv(channels[i + 1], 3, strides=2, name=f"blocks_{2 * i + 1}", **kw)(x))
        return conv(
            self.conditioning_embedding_channels, 3, kernel_init=_ZEROS, name="conv_out", **kw
        )(x)


class _ControlOutputs:
    """What both ControlNets add to the UNet encoder: the condition embedding and the heads."""

    def _embed_condition(self, cond: jax.Array, simplified: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.controlnet_conditioning_channel_order == "bgr":
            cond = cond[..., ::-1]
        elif self.controlnet_conditioning_channel_order != "rgb":
            raise NotImplementedError(
                "controlnet_conditioning_channel_order "
                f"{self.controlnet_conditioning_channel_order!r}; supported: 'rgb', 'bgr'"
            )
        if simplified:  # SparseCtrl RGB: one zero-init conv on a latent-size condition
            return conv(
                self.block_out_channels[0],
                3,
                kernel_init=_ZEROS,
                name="controlnet_cond_embedding",
                **kw,
            )(cond)
        return ControlNetConditioningEmbedding(
            self.block_out_channels[0],
            tuple(self.conditioning_embedding_out_channels),
            name="controlnet_cond_embedding",
            **kw,
        )(cond)

    def _condition_factor(self, simplified: bool = False) -> int:
        """How much larger than the latents the condition is."""
        return 1 if simplified else 2 ** (len(self.conditioning_embedding_out_channels) - 1)

    def _outputs(
        self, skips: Sequence[jax.Array], mid: jax.Array, conditioning_scale, guess_mode: bool
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """Zero-init 1×1 convs on every skip and on the mid block's output, then the scale:
        `conditioning_scale` (traceable), in guess mode 10^(−1…0) rising with depth (as diffusers),
        and with `global_pool_conditions` the spatial mean of each residual."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def zero_conv(x, name):
            return conv(x.shape[-1], 1, padding=0, kernel_init=_ZEROS, name=name, **kw)(x)

        down = [zero_conv(s, f"controlnet_down_blocks_{i}") for i, s in enumerate(skips)]
        mid = zero_conv(mid, "controlnet_mid_block")
        scale = jnp.asarray(conditioning_scale, jnp.float32)
        if guess_mode and not self.global_pool_conditions:
            scales = jnp.logspace(-1.0, 0.0, len(down) + 1, dtype=jnp.float32) * scale
        else:
            scales = jnp.broadcast_to(scale, (len(down) + 1,))
        down = [d * scales[i].astype(d.dtype) for i, d in enumerate(down)]
        mid = mid * scales[-1].astype(mid.dtype)
        if self.global_pool_conditions:
            down = [d.mean(axis=(-3, -2), keepdims=True) for d in down]
            mid = mid.mean(axis=(-3, -2), keepdims=True)
        return tuple(down), mid


def _check_encoder(module, down_types: Mapping[str, bool], mid_types: tuple) -> None:
    """The checks of `UNet2DConditionModel._check` that concern the encoder half."""
    name = type(module).__name__
    if len(module.block_out_channels) != len(module.down_block_types):
        raise ValueError(f"{name}: down_block_types and block_out_channels differ in length")
    for t in module.down_block_types:
        if t not in down_types:
            raise NotImplementedError(
                f"{name}: down block type {t!r}; supported: {list(down_types)}"
            )
    if module.mid_block_type not in mid_types:
        raise NotImplementedError(
            f"{name}: mid_block_type {module.mid_block_type!r}; supported: {mid_types}"
        )
    for key in ("encoder_hid_dim", "encoder_hid_dim_type"):
        if getattr(module, key) is not None:
            # diffusers' ControlNets build `encoder_hid_proj` but never apply it
            raise NotImplementedError(f"{name}: {key}={getattr(module, key)!r}")
    if module.addition_embed_type not in (None, "text_time"):
        raise NotImplementedError(f"{name}: addition_embed_type {module.addition_embed_type!r}")


def _check_condition(what: str, cond, expected: tuple) -> None:
    if cond.ndim != len(expected) or tuple(cond.shape) != expected:
        raise ValueError(f"{what}: expected shape {expected}, got {tuple(cond.shape)}")


class ControlNetModel(_ControlOutputs, UNet2DConditionModel):
    """SD ControlNet. Call: `(sample[B,h,w,C], timesteps[B] or scalar, encoder_hidden_states
    [B,L,D], controlnet_cond[B,H,W,conditioning_channels], conditioning_scale=1.0, *,
    class_labels=None, timestep_cond=None, added_cond_kwargs=None, guess_mode=False)` →
    `(down_block_res_samples, mid_block_res_sample)`, ready for the UNet's
    `down_block_additional_residuals` / `mid_block_additional_residual`. The condition is in
    pixel space: H = h·2^(len(conditioning_embedding_out_channels) − 1), 8× for SD."""

    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    global_pool_conditions: bool = False
    controlnet_conditioning_channel_order: str = "rgb"

    _down_types: ClassVar[Mapping[str, bool]] = _DOWN_TYPES

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> ControlNetModel:
        ignored = (*_IGNORED, "addition_embed_type_num_heads")
        return module_from_config(cls, config, ignored=ignored, **overrides)

    def _check(self):
        _check_encoder(self, self._down_types, ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"))

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        encoder_hidden_states: jax.Array,
        controlnet_cond: jax.Array,
        conditioning_scale: float | jax.Array = 1.0,
        *,
        class_labels: jax.Array | None = None,
        timestep_cond: jax.Array | None = None,
        added_cond_kwargs: Mapping[str, jax.Array] | None = None,
        guess_mode: bool = False,
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        self._check()
        if sample.ndim != 4:
            raise ValueError(f"ControlNetModel takes sample [B,h,w,C], got shape {sample.shape}")
        batch, height, width, _ = sample.shape
        f = self._condition_factor()
        expected = (batch, height * f, width * f, self.conditioning_channels)
        _check_condition("controlnet_cond [B,H,W,C]", controlnet_cond, expected)
        emb, context = self._embed(
            sample, timesteps, encoder_hidden_states, added_cond_kwargs, class_labels, timestep_cond
        )
        x = self._conv_in(sample) + self._embed_condition(controlnet_cond)
        x, skips = self._down(x, emb, context)
        x = self._mid(x, emb, context)
        return self._outputs(skips, x, conditioning_scale, guess_mode)


class SparseControlNetModel(_ControlOutputs, UNetMotionModel):
    """SparseCtrl. Call: `(sample[B,F,h,w,C], timesteps[B] or scalar, encoder_hidden_states
    [B,L,D] (shared by all frames), controlnet_cond[B,F,H,W,conditioning_channels],
    conditioning_scale=1.0, conditioning_mask=None, *, guess_mode=False)` →
    `(down_block_res_samples, mid_block_res_sample)`, each `[B,F,h',w',c]` (what
    `UNetMotionModel` takes).

    As in SparseCtrl, the noisy latents are not seen (only their shape is used): the ControlNet
    works from the condition alone. `conditioning_mask[B,F,H,W,1]` (or `[B,F]`) is 1 on the
    frames that carry a condition (the others are zero in `controlnet_cond`); with
    `concat_conditioning_mask` it is appended to the condition's channels. With
    `use_simplified_condition_embedding` (SparseCtrl RGB) the condition is latent-size (H = h) and
    embedded by one zero-init conv; otherwise it is pixel-space, as for `ControlNetModel`.
    Down blocks carry motion modules with one temporal self-attention each; the mid block has
    none (as in diffusers)."""

    conditioning_channels: int = 4
    cross_attention_dim: int | tuple[int, ...] = 768
    num_attention_heads: int | tuple[int, ...] | None = None
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    global_pool_conditions: bool = False
    controlnet_conditioning_channel_order: str = "rgb"
    concat_conditioning_mask: bool = True
    use_simplified_condition_embedding: bool = True
    use_motion_mid_block: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> SparseControlNetModel:
        return module_from_config(cls, config, ignored=_IGNORED, **overrides)

    def _check(self):
        _check_encoder(self, self._down_types, ("UNetMidBlock2DCrossAttn",))
        if self.use_motion_mid_block or self.mid_block_layers != 1:
            raise NotImplementedError(
                "SparseControlNetModel: use_motion_mid_block / mid_block_layers (its mid block "
                "is a plain UNetMidBlock2DCrossAttn)"
            )

    def _stage(self, kind: str, index: int, num_frames: int, **fields) -> nn.Module:
        if kind == "down" and not (self.skip_motion_for_images and num_frames == 1):
            fields["motion_double_self_attention"] = False
        return super()._stage(kind, index, num_frames, **fields)

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        encoder_hidden_states: jax.Array,
        controlnet_cond: jax.Array,
        conditioning_scale: float | jax.Array = 1.0,
        conditioning_mask: jax.Array | None = None,
        *,
        guess_mode: bool = False,
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        self._check()
        if sample.ndim != 5:
            raise ValueError(f"SparseControlNetModel takes videos [B,F,h,w,C], got {sample.shape}")
        batch, frames, height, width, _ = sample.shape
        simplified = self.use_simplified_condition_embedding
        f = self._condition_factor(simplified)
        size = (batch, frames, height * f, width * f)
        _check_condition(
            "controlnet_cond [B,F,H,W,C]", controlnet_cond, (*size, self.conditioning_channels)
        )
        if self.concat_conditioning_mask:
            if conditioning_mask is None:
                raise ValueError(
                    "this SparseControlNetModel has concat_conditioning_mask: pass "
                    f"conditioning_mask of shape {(*size, 1)} (1 on conditioned frames)"
                )
            mask = jnp.asarray(conditioning_mask, controlnet_cond.dtype)
            if mask.shape == (batch, frames):
                mask = jnp.broadcast_to(mask[:, :, None, None, None], (*size, 1))
            _check_condition("conditioning_mask [B,F,H,W,1]", mask, (*size, 1))
            controlnet_cond = jnp.concatenate([controlnet_cond, mask], axis=-1)

        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states: expected [B,L,D] with B={batch} (shared by all frames), "
                f"got shape {tuple(encoder_hidden_states.shape)}"
            )
        emb, context = self._embed(sample[:, 0], timesteps, encoder_hidden_states, None, None, None)
        emb = jnp.repeat(emb, frames, axis=0)
        context = jnp.repeat(context, frames, axis=0)
        fold = (batch * frames,)
        cond = controlnet_cond.reshape(fold + controlnet_cond.shape[2:])
        x = self._conv_in(jnp.zeros(fold + sample.shape[2:], sample.dtype))
        x = x + self._embed_condition(cond, simplified)
        x, skips = self._down(x, emb, context, num_frames=frames)
        x = self._mid(x, emb, context, num_frames=frames)
        down, mid = self._outputs(skips, x, conditioning_scale, guess_mode)

        def unfold(r):
            return r.reshape(batch, frames, *r.shape[1:])

        return tuple(unfold(d) for d in down), unfold(mid)
