"""PyTorch → Flax mapping for transformers' `CLIPTextModel`, `CLIPTextModelWithProjection` and
`CLIPVisionModelWithProjection`.

Flax modules mirror the published key layout (`text_model.encoder.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

import jax.numpy as jnp

from mv2_jax.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from mv2_jax.models.clip_vision import CLIPVisionModelWithProjection
from mv2_jax.weights.mapping import Rule
from mv2_jax.weights.registry import Family, register

# Keys that differ from the mechanical `a.0.b` → `a_0/b` rule.
CLIP_TEXT_RULES = (
    # transformers ≥ 5 saves CLIPTextModel without the `text_model.` prefix that every published
    # checkpoint (and CLIPTextModelWithProjection) has.
    Rule(r"(embeddings|encoder|final_layer_norm)\..*", r"text_model.\g<0>"),
    # A non-trainable buffer (arange), written by transformers < 4.31.
    Rule(r"text_model\.embeddings\.position_ids", None),
)


def clip_text_example_inputs(model: CLIPTextModel) -> tuple[tuple, dict]:
    """The smallest inputs that create every param of a CLIP text model."""
    return (jnp.zeros((1, 1), jnp.int32),), {}


def _family(cls) -> Family:
    return Family(
        build=lambda config, dtype: cls.from_config(config, dtype=dtype, param_dtype=dtype),
        example_inputs=clip_text_example_inputs,
        rules=CLIP_TEXT_RULES,
        weights_stem="model",
    )


CLIP_TEXT = register(_family(CLIPTextModel), "CLIPTextModel")
CLIP_TEXT_WITH_PROJECTION = register(
    _family(CLIPTextModelWithProjection), "CLIPTextModelWithProjection"
)


# A non-trainable buffer (arange) in checkpoints written by older transformers.
CLIP_VISION_RULES = (Rule(r"vision_model\.embeddings\.position_ids", None),)


def clip_vision_example_inputs(model: CLIPVisionModelWithProjection) -> tuple[tuple, dict]:
    """One image of the model's size (the position table fixes the size)."""
    size = model.image_size
    return (jnp.zeros((1, size, size, model.num_channels)),), {}


CLIP_VISION_WITH_PROJECTION = register(
    Family(
        build=lambda config, dtype: CLIPVisionModelWithProjection.from_config(
            config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=clip_vision_example_inputs,
        rules=CLIP_VISION_RULES,
        weights_stem="model",
    ),
    "CLIPVisionModelWithProjection",
)
