"""IP-Adapter (Ye et al. 2023, arXiv:2308.06721): image-prompt cross-attention for the SD UNets.

A CLIP image embedding is projected to a few tokens (`ImageProjection`); every cross-attention
`attn2` then attends to the text and, with its own key / value projections (`to_k_ip`,
`to_v_ip`), to the image tokens, and adds the two results (decoupled cross-attention):
`attn2(x) = to_out(attn(q, K_text, V_text) + scale · attn(q, K_ip, V_ip))`.

The UNet builds an `ImagePromptContext` in `_embed` (from `added_cond_kwargs["image_embeds"]` and
`["ip_adapter_scale"]`) and passes it down as its cross-attention context; the scale is a traced
value, so changing it never recompiles, and scale 0 gives the UNet without the adapter. Param
names follow diffusers' module tree after `load_ip_adapter` (`encoder_hid_proj.
image_projection_layers.0.*`, `attn2.processor.to_k_ip.0.*`); `mv2_jax.weights.ip_adapter`
reads the original checkpoint layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mv2_jax.models.attention import dot_product_attention
from mv2_jax.models.layers import dense, layer_norm


@flax.struct.dataclass
class ImagePromptContext:
    """Cross-attention context with IP-Adapter tokens: `text [B,L,D]`, `image [B,N,D]` (the
    projected image tokens) and the per-sample adapter `scale [B]`. A pytree with the batch
    first in every leaf, so the motion UNet repeats it over frames like a plain context."""

    text: jax.Array
    image: jax.Array
    scale: jax.Array


class ImageProjection(nn.Module):
    """diffusers' `ImageProjection` (IP-Adapter's `image_proj`): `image_embeds` Linear to
    `num_tokens · cross_attention_dim`, reshaped to tokens, then LayerNorm `norm`.
    `[B, D_img]` → `[B, num_tokens, C]`; several images `[B, M, D_img]` → `[B, M·num_tokens, C]`."""

    cross_attention_dim: int
    num_tokens: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image_embeds: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.cross_attention_dim
        h = dense(self.num_tokens * c, ("embed", "embed"), name="image_embeds", **kw)(image_embeds)
        h = h.reshape(h.shape[0], -1, c)
        return layer_norm(1e-5, name="norm", **kw)(h)


class IPAdapterImageProjection(nn.Module):
    """diffusers' `MultiIPAdapterImageProjection` holding one adapter's projection
    (`image_projection_layers_0`)."""

    cross_attention_dim: int
    num_tokens: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image_embeds: jax.Array) -> jax.Array:
        return ImageProjection(
            self.cross_attention_dim,
            self.num_tokens,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="image_projection_layers_0",
        )(image_embeds)


def image_prompt_context(
    text: jax.Array,
    added_cond_kwargs: Mapping[str, Any] | None,
    *,
    cross_attention_dim: int,
    num_tokens: int,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> ImagePromptContext:
    """The UNet's context with image tokens; call inside the UNet's compact method (it creates
    the `encoder_hid_proj` submodule there). `added_cond_kwargs`: `image_embeds [B, D_img]` or
    `[B, M, D_img]` (CLIP image embeddings; zeros for the unconditional half of CFG, as diffusers
    does) and optional `ip_adapter_scale` (scalar or `[B]`, default 1)."""
    if not added_cond_kwargs or "image_embeds" not in added_cond_kwargs:
        raise ValueError(
            "this UNet has an IP-Adapter: pass added_cond_kwargs={'image_embeds': [B, D_img], "
            "'ip_adapter_scale': s} (scale 0 switches the adapter off)"
        )
    embeds = jnp.asarray(added_cond_kwargs["image_embeds"])
    batch = text.shape[0]
    if embeds.ndim not in (2, 3) or embeds.shape[0] != batch:
        raise ValueError(
            f"image_embeds {embeds.shape}: expected [B, D_img] or [B, M, D_img] with B = {batch} "
            "(the batch of encoder_hidden_states)"
        )
    tokens = IPAdapterImageProjection(
        cross_attention_dim, num_tokens, dtype=dtype, param_dtype=param_dtype,
        name="encoder_hid_proj",
    )(embeds.reshape(-1, embeds.shape[-1]).astype(dtype))  # fmt: skip
    tokens = tokens.reshape(batch, -1, cross_attention_dim)
    scale = jnp.asarray(added_cond_kwargs.get("ip_adapter_scale", 1.0), jnp.float32)
    if scale.ndim > 1 or scale.size not in (1, batch):
        raise ValueError(f"ip_adapter_scale {scale.shape}: expected a scalar or [B] = [{batch}]")
    return ImagePromptContext(text, tokens, jnp.broadcast_to(scale.reshape(-1), (batch,)))


class IPAdapterAttention(nn.Module):
    """diffusers' `Attention` with `IPAdapterAttnProcessor2_0` (one adapter): cross-attention
    over the text plus, through `processor.to_k_ip_0` / `to_v_ip_0`, over the image tokens,
    added with the adapter's scale before `to_out_0`. Same `to_q/to_k/to_v/to_out_0` params as
    the plain `attn2`, so a UNet's params load unchanged."""

    query_dim: int
    heads: int
    dim_head: int
    qkv_bias: bool = False
    out_bias: bool = True
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, context: ImagePromptContext) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.dim_head
        split = lambda x: x.reshape(*x.shape[:-1], self.heads, self.dim_head)  # noqa: E731

        def projection(name, x, bias=self.qkv_bias):
            return split(dense(inner, ("embed", "heads"), use_bias=bias, name=name, **kw)(x))

        def attend(k, v):
            return dot_product_attention(q, k, v, implementation=self.attention_implementation)

        q = projection("to_q", hidden_states)
        out = attend(projection("to_k", context.text), projection("to_v", context.text))
        k_ip, v_ip = _IPProjections(inner, name="processor", **kw)(context.image)
        image_out = attend(split(k_ip), split(v_ip))
        out = out + context.scale.astype(out.dtype)[:, None, None, None] * image_out
        out = out.reshape(*out.shape[:-2], inner)
        return dense(
            self.query_dim, ("heads", "embed"), use_bias=self.out_bias, name="to_out_0", **kw
        )(out)


class _IPProjections(nn.Module):
    """The processor's bias-free `to_k_ip_0` / `to_v_ip_0` over the image tokens."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
        k = dense(self.features, ("embed", "heads"), name="to_k_ip_0", **kw)(image)
        v = dense(self.features, ("embed", "heads"), name="to_v_ip_0", **kw)(image)
        return k, v
