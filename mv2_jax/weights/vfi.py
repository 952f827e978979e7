"""The `FrameInterpolator` family for `load_component`, and writing one as a component folder
(`config.json` + `diffusion_pytorch_model.safetensors`).

The safetensors hold a PyTorch-layout state dict with RIFE-style names
(`block0.conv0.0.0.weight [out, in, 3, 3]`, `block0.convblock.3.beta`, `block0.lastconv.0.weight`
`[in, out, 4, 4]` of a transposed conv), so the generic mapping reads it with no rules.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from mv2_jax.models.config import module_from_config
from mv2_jax.models.vfi import FrameInterpolator
from mv2_jax.weights.registry import Family, register
from mv2_jax.weights.torch_layout import write_torch_layout_folder

WEIGHTS_STEM = "diffusion_pytorch_model"
_RUNTIME_FIELDS = ("parent", "name", "dtype", "param_dtype")


def vfi_example_inputs(model: FrameInterpolator) -> tuple[tuple, dict]:
    """The smallest frames the model takes: one `size_multiple`² pair at t = 0.5."""
    m = model.size_multiple
    frame = jnp.zeros((1, m, m, 3))
    return (frame, frame, jnp.full((1,), 0.5)), {}


VFI = register(
    Family(
        build=lambda config, dtype: module_from_config(
            FrameInterpolator, config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=vfi_example_inputs,
        weights_stem=WEIGHTS_STEM,
    ),
    "FrameInterpolator",
)


def vfi_config(model: FrameInterpolator) -> dict[str, Any]:
    """The `config.json` dict that builds `model` again."""
    config: dict[str, Any] = {"_class_name": "FrameInterpolator"}
    for field in dataclasses.fields(model):
        if field.init and field.name not in _RUNTIME_FIELDS:
            value = getattr(model, field.name)
            config[field.name] = list(value) if isinstance(value, tuple) else value
    return config


def write_vfi_folder(folder: str | os.PathLike, model: FrameInterpolator, params: Any) -> Path:
    """`folder/config.json` + `folder/diffusion_pytorch_model.safetensors`, read back by
    `mv2_jax.load_component(folder)`."""
    return write_torch_layout_folder(folder, vfi_config(model), params)
