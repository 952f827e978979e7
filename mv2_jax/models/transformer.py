"""The spatial transformer of the SD UNets: `Transformer2DModel` and `BasicTransformerBlock`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.attention import Attention
from mv2_jax.models.ip_adapter import ImagePromptContext, IPAdapterAttention
from mv2_jax.models.layers import dense, group_norm, layer_norm

_FF_ACTIVATIONS = ("geglu", "gelu", "gelu-approximate")
# Variable collection of reference attention: the appearance encoder writes it, the UNet reads it.
REFERENCE = "reference"


class FeedForward(nn.Module):
    """`net.0` (GEGLU / GELU projection) → `net.2` (Linear), as in diffusers."""

    dim: int
    mult: int = 4
    activation_fn: str = "geglu"
    inner_dim: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.activation_fn not in _FF_ACTIVATIONS:
            raise NotImplementedError(
                f"feed-forward activation {self.activation_fn!r}; supported: {_FF_ACTIVATIONS}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.inner_dim or self.dim * self.mult
        if self.activation_fn == "geglu":
            # GLU variants (Shazeer 2020): value · GELU(gate), both from one projection
            h = dense(inner * 2, ("embed", "mlp"), name="net_0_proj", **kw)(x)
            value, gate = jnp.split(h, 2, axis=-1)
            h = value * nn.gelu(gate, approximate=False)
        else:
            h = dense(inner, ("embed", "mlp"), name="net_0_proj", **kw)(x)
            h = nn.gelu(h, approximate=self.activation_fn == "gelu-approximate")
        return dense(self.dim, ("mlp", "embed"), name="net_2", **kw)(h)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention (`attn1`), cross-attention (`attn2`), feed-forward (`ff`).

    `only_cross_attention` makes `attn1` attend to the context too.
    """

    dim: int
    num_attention_heads: int
    attention_head_dim: int
    cross_attention_dim: int | None = None
    activation_fn: str = "geglu"
    attention_bias: bool = False
    only_cross_attention: bool = False
    double_self_attention: bool = False
    norm_eps: float = 1e-5
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(
            query_dim=self.dim,
            heads=self.num_attention_heads,
            dim_head=self.attention_head_dim,
            qkv_bias=self.attention_bias,
            attention_implementation=self.attention_implementation,
            **kw,
        )
        h = layer_norm(self.norm_eps, name="norm1", **kw)(x)
        if self.only_cross_attention:
            x = x + Attention(**attn, name="attn1")(h, context)
        else:
            x = x + Attention(**attn, name="attn1")(h, *self._reference_context(h))
        if self.cross_attention_dim is not None or self.double_self_attention:
            h = layer_norm(self.norm_eps, name="norm2", **kw)(x)
            if isinstance(context, ImagePromptContext):  # IP-Adapter: text + image tokens
                x = x + IPAdapterAttention(**attn, name="attn2")(h, context)
            else:
                x = x + Attention(**attn, name="attn2")(
                    h, None if self.double_self_attention else context
                )
        h = layer_norm(self.norm_eps, name="norm3", **kw)(x)
        return x + FeedForward(self.dim, activation_fn=self.activation_fn, name="ff", **kw)(h)

    def _reference_context(self, h: jax.Array) -> tuple[jax.Array | None, jax.Array | None]:
        """Reference attention (`mv2_jax.models.appearance`): `(context, key_bias)` of `attn1`.

        With a `reference` collection given, `attn1` attends to this block's tokens followed by
        the reference's (`hidden [B_ref, N, C]`, repeated over the frames folded into the
        batch), the reference keys weighted by `exp(log_scale)`. With the collection mutable,
        the block records its `attn1` input instead (the appearance encoder's pass)."""
        if self.has_variable(REFERENCE, "hidden"):
            ref = self.get_variable(REFERENCE, "hidden").astype(h.dtype)
            if h.shape[0] % ref.shape[0] or ref.shape[2] != h.shape[2]:
                raise ValueError(
                    f"reference hidden states {ref.shape} do not fit tokens {h.shape}: the "
                    "reference batch must divide the (batch·frames) batch, channels must match"
                )
            ref = jnp.repeat(ref, h.shape[0] // ref.shape[0], axis=0)
            log_scale = self.get_variable(REFERENCE, "log_scale", jnp.zeros((), jnp.float32))
            bias = jnp.concatenate(
                [jnp.zeros((h.shape[1],), jnp.float32), jnp.full((ref.shape[1],), log_scale)]
            )
            return jnp.concatenate([h, ref], axis=1), bias
        if self.is_mutable_collection(REFERENCE) and not self.is_initializing():
            self.put_variable(REFERENCE, "hidden", h)
        return None, None


class Transformer2DModel(nn.Module):
    """GroupNorm → proj_in → transformer blocks over the H·W tokens → proj_out, plus residual.

    `proj_in`/`proj_out` are Dense layers: PyTorch's 1×1 convolutions (`use_linear_projection=
    False`) and Linear layers are the same map channels-last; the weight mapping handles both.
    """

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int = 1
    cross_attention_dim: int | None = None
    norm_num_groups: int = 32
    only_cross_attention: bool = False
    activation_fn: str = "geglu"
    attention_bias: bool = False
    norm_eps: float = 1e-5
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, height, width, channels = x.shape
        inner = self.num_attention_heads * self.attention_head_dim
        h = group_norm(self.norm_num_groups, 1e-6, name="norm", **kw)(x)
        h = dense(inner, ("embed", "embed"), name="proj_in", **kw)(
            h.reshape(b, height * width, channels)
        )
        for i in range(self.num_layers):
            h = BasicTransformerBlock(
                inner,
                self.num_attention_heads,
                self.attention_head_dim,
                cross_attention_dim=self.cross_attention_dim,
                activation_fn=self.activation_fn,
                attention_bias=self.attention_bias,
                only_cross_attention=self.only_cross_attention,
                norm_eps=self.norm_eps,
                attention_implementation=self.attention_implementation,
                name=f"transformer_blocks_{i}",
                **kw,
            )(h, context)
        h = dense(channels, ("embed", "embed"), name="proj_out", **kw)(h)
        return h.reshape(b, height, width, channels) + x
