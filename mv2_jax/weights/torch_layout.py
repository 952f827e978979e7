"""Flax params → PyTorch-layout state dicts and component folders: the mechanical inverse of
`weights/mapping.py`, for the models trained here (VAE, CLIP, frame interpolator), so that what
`train.py` exports is read by `mv2_jax.load_component` and by diffusers / transformers alike.

Flax modules are named after their PyTorch counterparts, so the inverse is the same for every
family: a trailing `_<n>` of a module name is a list index (`down_blocks_0` → `down_blocks.0`,
`conv0_1_0` → `conv0.1.0`), Dense kernels `[in, out]` become `weight [out, in]`, convolution
kernels `[kh, kw, in, out]` become `[out, in, kh, kw]`, and LayerNorm / GroupNorm `scale` and
Embed `embedding` become `weight`.
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

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"


def torch_module_name(flax_name: str) -> str:
    """`layers_3` → `layers.3`, `conv0_1_0` → `conv0.1.0`: trailing numbers are indices."""
    return re.sub(r"_(\d+)(?=_|$)", r".\1", flax_name)


def torch_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params → the PyTorch-layout state dict (float32 numpy, contiguous)."""
    state = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        *modules, leaf = path
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            leaf, value = "weight", value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        key = ".".join([*(torch_module_name(m) for m in modules), leaf])
        state[key] = np.ascontiguousarray(value)
    return state


def write_torch_layout_folder(
    folder: str | os.PathLike,
    config: Mapping[str, Any],
    params: Mapping[str, Any],
    weights_file: str = DIFFUSERS_WEIGHTS,
) -> Path:
    """`folder/config.json` (`config` as given) + `folder/<weights_file>` of `params`."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
    save_file(torch_state_dict(params), str(folder / weights_file), metadata={"format": "pt"})
    return folder
