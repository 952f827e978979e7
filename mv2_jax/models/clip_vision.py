"""CLIP vision tower (`CLIPVisionModelWithProjection`, transformers' names) and its image
preprocessing: the image encoder of IP-Adapter. The encoder stack is the text model's
(`clip.py`), run without the causal mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mv2_jax.models.clip import CLIPEncoder
from mv2_jax.models.config import module_from_config
from mv2_jax.models.layers import conv, dense, embed, layer_norm

# `CLIPImageProcessor`'s defaults (OpenAI CLIP's training statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' CLIPVisionConfig keys with no effect on inference here.
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


@flax.struct.dataclass
class CLIPVisionModelOutput:
    """transformers' `CLIPVisionModelOutput`: `image_embeds [B,P]` (projected, post-LayerNorm
    class token), `last_hidden_state [B,1+N,D]` (encoder output, no final norm) and
    `hidden_states` (the pre-LayerNormed embeddings, then every layer's output) or None."""

    image_embeds: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


class _VisionConfig(nn.Module):
    """The fields of transformers' `CLIPVisionConfig`."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides):
        """Build from a transformers `config.json` dict (vision config at top level)."""
        return module_from_config(cls, config, ignored=_IGNORED, **overrides)

    def _kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def _config(self) -> dict:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(_VisionConfig)
            if f.name not in ("parent", "name")
        }


class CLIPVisionEmbeddings(_VisionConfig):
    """Patch embedding (a bias-free stride-`patch_size` convolution), a learned class token in
    front, plus learned absolute position embeddings: `[B,H,W,C] → [B, 1 + (H/p)·(W/p), D]`."""

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        kw, p, d = self._kw(), self.patch_size, self.hidden_size
        patches = conv(
            d, p, strides=p, padding=0, axes=(None, "embed"), use_bias=False,
            name="patch_embedding", **kw,
        )(pixel_values)  # fmt: skip
        b = patches.shape[0]
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",))
        cls = self.param("class_embedding", init, (d,), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d))
        x = jnp.concatenate([cls, patches.reshape(b, -1, d).astype(self.dtype)], axis=1)
        positions = (self.image_size // p) ** 2 + 1
        table = embed(positions, d, (None, "embed"), name="position_embedding", **kw)
        return x + table(jnp.arange(positions))[None]


class CLIPVisionTransformer(_VisionConfig):
    """transformers' `CLIPVisionModel`: embeddings → `pre_layrnorm` (transformers' spelling) →
    bidirectional encoder; `post_layernorm` of the class token is the pooled output.
    Returns (states: embeddings then every layer, pooled `[B,D]`)."""

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        kw = self._kw()
        x = CLIPVisionEmbeddings(**self._config(), name="embeddings")(pixel_values)
        x = layer_norm(self.layer_norm_eps, name="pre_layrnorm", **kw)(x)
        states = CLIPEncoder(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            attention_implementation=self.attention_implementation,
            causal=False,
            name="encoder",
            **kw,
        )(x, None)
        pooled = layer_norm(self.layer_norm_eps, name="post_layernorm", **kw)(states[-1][:, 0])
        return states, pooled


class CLIPVisionModelWithProjection(_VisionConfig):
    """transformers' `CLIPVisionModelWithProjection` (IP-Adapter's image encoder). Call:
    `(pixel_values[B,H,W,C], output_hidden_states=False) → CLIPVisionModelOutput`; pixels
    channels-last, already normalised (see `preprocess_images`), `H = W = image_size`."""

    @nn.compact
    def __call__(
        self, pixel_values: jax.Array, output_hidden_states: bool = False
    ) -> CLIPVisionModelOutput:
        expected = (self.image_size, self.image_size, self.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values {tuple(pixel_values.shape)}: expected channels-last [B, "
                f"{', '.join(map(str, expected))}]; resize with preprocess_images first"
            )
        states, pooled = CLIPVisionTransformer(**self._config(), name="vision_model")(pixel_values)
        projection = dense(
            self.projection_dim,
            ("embed", None),
            use_bias=False,
            name="visual_projection",
            **self._kw(),
        )
        return CLIPVisionModelOutput(
            image_embeds=projection(pooled),
            last_hidden_state=states[-1],
            hidden_states=states if output_hidden_states else None,
        )


def preprocess_images(
    images: jax.Array,
    image_size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> jax.Array:
    """`CLIPImageProcessor` in JAX: `images [B,H,W,3]` (uint8 in [0, 255] or float in [0, 1]) →
    `[B, image_size, image_size, 3]` float32, normalised. The shortest side is resized to
    `image_size` (bicubic, antialiased when shrinking, clipped to the input range), then the
    centre is cropped, as transformers does (same rounding of the long side and of the crop
    offsets). Float inputs are taken to be in [0, 1]."""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != len(mean):
        raise ValueError(f"images {images.shape}: expected [B, H, W, {len(mean)}] channels-last")
    if jnp.issubdtype(images.dtype, jnp.integer):
        images = images.astype(jnp.float32) / 255.0
    b, h, w, c = images.shape
    short, long = min(h, w), max(h, w)
    new_long = int(image_size * long / short)
    new_h, new_w = (image_size, new_long) if h <= w else (new_long, image_size)
    images = jax.image.resize(
        images.astype(jnp.float32), (b, new_h, new_w, c), method="bicubic", antialias=True
    )
    # Bicubic overshoots near edges; PIL (which CLIPImageProcessor resizes with) clips to [0, 255].
    images = jnp.clip(images, 0.0, 1.0)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    images = images[:, top : top + image_size, left : left + image_size]
    return (images - jnp.asarray(mean)) / jnp.asarray(std)
