"""CLIP text encoders (`CLIPTextModel`, `CLIPTextModelWithProjection`) with transformers' config
names and module names, so transformers checkpoints (CLIP-L, OpenCLIP bigG) load mechanically.
The encoder stack is shared with the vision tower in `clip_vision.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mv2_jax.models.attention import dot_product_attention
from mv2_jax.models.config import module_from_config
from mv2_jax.models.layers import activation, dense, embed, layer_norm

# transformers' CLIPTextConfig keys with no effect on inference here.
_IGNORED = (
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "attention_dropout",
    "dropout",
    "initializer_factor",
    "initializer_range",
)
# Fields every linen module has; not part of the text config.
_MODULE_FIELDS = ("parent", "name")


@flax.struct.dataclass
class CLIPTextOutput:
    """transformers' `BaseModelOutputWithPooling`: `last_hidden_state [B,L,D]`,
    `pooler_output [B,D]` (final-norm state at the EOS token), `hidden_states` (embeddings, then
    every layer's output, each `[B,L,D]`) or None."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class CLIPTextModelOutput:
    """transformers' `CLIPTextModelOutput`: `text_embeds [B,P]` (projected pooled state) plus the
    encoder states as in `CLIPTextOutput`."""

    text_embeds: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


class _TextConfig(nn.Module):
    """The fields of transformers' `CLIPTextConfig`, shared by both text models."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407
    attention_implementation: str = "auto"
    # The text model attends causally; the vision tower (`clip_vision.py`) reuses the encoder
    # with `causal=False`.
    causal: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides):
        """Build from a transformers `config.json` dict (text config at top level)."""
        return module_from_config(cls, config, ignored=_IGNORED, **overrides)

    def _kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def _text_config(self) -> dict:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(_TextConfig)
            if f.name not in _MODULE_FIELDS
        }


class CLIPAttention(nn.Module):
    """Multi-head self-attention with `q_proj` / `k_proj` / `v_proj` / `out_proj`."""

    hidden_size: int
    num_heads: int
    attention_implementation: str = "auto"
    causal: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = self.hidden_size // self.num_heads
        split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)  # noqa: E731
        q, k, v = (
            split(dense(self.hidden_size, ("embed", "heads"), name=n, **kw)(x))
            for n in ("q_proj", "k_proj", "v_proj")
        )
        out = dot_product_attention(
            q, k, v, mask=mask, is_causal=self.causal, implementation=self.attention_implementation
        )
        out = out.reshape(*out.shape[:-2], self.hidden_size)
        return dense(self.hidden_size, ("heads", "embed"), name="out_proj", **kw)(out)


class CLIPEncoderLayer(_TextConfig):
    """Pre-norm block: x + attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        kw = self._kw()
        h = layer_norm(self.layer_norm_eps, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(
            self.hidden_size,
            self.num_attention_heads,
            self.attention_implementation,
            self.causal,
            name="self_attn",
            **kw,
        )(h, mask)
        h = layer_norm(self.layer_norm_eps, name="layer_norm2", **kw)(x)
        return x + CLIPMLP(
            self.hidden_size, self.intermediate_size, self.hidden_act, name="mlp", **kw
        )(h)


class CLIPMLP(nn.Module):
    """`fc1` → activation → `fc2`."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(x)
        h = activation(self.hidden_act)(h)
        return dense(self.hidden_size, ("mlp", "embed"), name="fc2", **kw)(h)


class CLIPTextEmbeddings(_TextConfig):
    """Token plus learned absolute position embeddings."""

    @nn.compact
    def __call__(self, input_ids: jax.Array, position_ids: jax.Array) -> jax.Array:
        kw = self._kw()
        tokens = embed(self.vocab_size, self.hidden_size, name="token_embedding", **kw)
        positions = embed(
            self.max_position_embeddings,
            self.hidden_size,
            (None, "embed"),
            name="position_embedding",
            **kw,
        )
        return tokens(input_ids) + positions(position_ids)


class CLIPEncoder(_TextConfig):
    """`layers_0 … layers_{N-1}`; returns the input and every layer's output."""

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, ...]:
        states = [x]
        for i in range(self.num_hidden_layers):
            x = CLIPEncoderLayer(**self._text_config(), name=f"layers_{i}")(x, mask)
            states.append(x)
        return tuple(states)


class CLIPTextTransformer(_TextConfig):
    """Embeddings → causal encoder → final LayerNorm → EOS pooling (transformers' text model)."""

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> CLIPTextOutput:
        length = input_ids.shape[-1]
        if length > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"{self.max_position_embeddings}"
            )
        if position_ids is None:
            position_ids = jnp.arange(length)[None]
        config = self._text_config()
        x = CLIPTextEmbeddings(**config, name="embeddings")(input_ids, position_ids)
        # Padding mask over keys `[B,1,1,L]`; dot_product_attention ANDs it with the causal mask.
        mask = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
        states = CLIPEncoder(**config, name="encoder")(x, mask)
        last = layer_norm(self.layer_norm_eps, name="final_layer_norm", **self._kw())(states[-1])
        if self.eos_token_id == 2:
            # Configs from before transformers PR #24773 carry eos_token_id=2; for them the EOS
            # token is taken to be the largest id in the sequence, as transformers still does.
            eos_at = jnp.argmax(input_ids, axis=-1)
        else:
            # First EOS (padding may repeat the EOS id).
            eos_at = jnp.argmax((input_ids == self.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = jnp.take_along_axis(last, eos_at[:, None, None], axis=1)[:, 0]
        return CLIPTextOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=states if output_hidden_states else None,
        )


class CLIPTextModel(_TextConfig):
    """transformers' `CLIPTextModel`. Call: `(input_ids[B,L], attention_mask[B,L]=None (1 = keep),
    position_ids=None, output_hidden_states=False) → CLIPTextOutput`."""

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> CLIPTextOutput:
        return CLIPTextTransformer(**self._text_config(), name="text_model")(
            input_ids, attention_mask, position_ids, output_hidden_states
        )


class CLIPTextModelWithProjection(_TextConfig):
    """transformers' `CLIPTextModelWithProjection` (SDXL's second encoder): the text model plus a
    bias-free `text_projection` of the pooled state. Call as `CLIPTextModel`;
    returns `CLIPTextModelOutput`."""

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> CLIPTextModelOutput:
        out = CLIPTextTransformer(**self._text_config(), name="text_model")(
            input_ids, attention_mask, position_ids, output_hidden_states
        )
        projection = dense(
            self.projection_dim,
            ("embed", None),
            use_bias=False,
            name="text_projection",
            **self._kw(),
        )
        return CLIPTextModelOutput(
            text_embeds=projection(out.pooler_output),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
        )
