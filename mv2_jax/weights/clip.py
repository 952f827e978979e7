"""PyTorch → Flax mapping for transformers' `CLIPTextModel`, `CLIPTextModelWithProjection` and
`CLIPVisionModelWithProjection`.

Flax modules mirror the published key layout (`text_model.encoder.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from mv2_jax.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from mv2_jax.models.clip_vision import CLIPVisionModelWithProjection
from mv2_jax.weights.mapping import Rule
from mv2_jax.weights.registry import Family, register
from mv2_jax.weights.torch_layout import TRANSFORMERS_WEIGHTS, write_torch_layout_folder

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


# ---- CLIP models trained here (mv2_jax.training.clip) as transformers folders


def text_model_folder(folder, text_config: Mapping[str, Any], params: Mapping[str, Any]) -> Path:
    """A `CLIPTextModel` folder from the params of a `CLIPTextModelWithProjection` (or of a
    `CLIPTextModel`): the transformer alone, without `text_projection`."""
    config = {
        **{k: v for k, v in text_config.items() if not k.startswith("_")},
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "dtype": "float32",
    }
    text = {"text_model": params["text_model"]}
    return write_torch_layout_folder(folder, config, text, TRANSFORMERS_WEIGHTS)


def vision_model_folder(
    folder, vision_config: Mapping[str, Any], params: Mapping[str, Any]
) -> Path:
    """A `CLIPVisionModelWithProjection` folder."""
    config = {
        **{k: v for k, v in vision_config.items() if not k.startswith("_")},
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "dtype": "float32",
    }
    return write_torch_layout_folder(folder, config, params, TRANSFORMERS_WEIGHTS)
