"""Flax CLIP params → transformers' state dicts and component folders: the inverse of the
mapping in `weights/clip.py`, for CLIP models trained here (`mv2_jax.training.clip`).

A folder written here (`config.json` + `model.safetensors`, float32, the published key
layout: `text_model.encoder.layers.0.self_attn.q_proj.weight`, …) is read by both
`mv2_jax.load_component` and transformers' `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

WEIGHTS_FILE = "model.safetensors"


def _torch_module_name(flax_name: str) -> str:
    """`layers_3` → `layers.3` (a trailing index is a list position in PyTorch)."""
    return re.sub(r"_(\d+)$", r".\1", flax_name)


def torch_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A CLIP model's Flax params → its transformers state dict (float32 numpy): Dense kernels
    `[in, out]` → `weight [out, in]`, convolution kernels `[kh, kw, in, out]` → `[out, in, kh,
    kw]`, LayerNorm `scale` and Embed `embedding` → `weight`; other leaves keep their name."""
    state = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        *modules, leaf = path
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            leaf, value = "weight", value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        key = ".".join([*(_torch_module_name(m) for m in modules), leaf])
        state[key] = np.ascontiguousarray(value)
    return state


def write_transformers_folder(
    folder: str | os.PathLike, config: Mapping[str, Any], params: Mapping[str, Any]
) -> Path:
    """`folder/config.json` (`config` as given: transformers keys, `architectures` included)
    + `folder/model.safetensors` of `params`."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
    save_file(torch_state_dict(params), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def text_model_folder(folder, text_config: Mapping[str, Any], params: Mapping[str, Any]) -> Path:
    """A `CLIPTextModel` folder from the params of a `CLIPTextModelWithProjection` (or of a
    `CLIPTextModel`): the transformer alone, without `text_projection`."""
    config = {
        **{k: v for k, v in text_config.items() if not k.startswith("_")},
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "dtype": "float32",
    }
    return write_transformers_folder(folder, config, {"text_model": params["text_model"]})


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
    return write_transformers_folder(folder, config, params)
