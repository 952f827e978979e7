"""`load_component`: a diffusers / transformers component folder → (linen module, params).

Reads `config.json` plus `*.safetensors` (single, sharded, fp16/bf16 variants) with numpy only,
or the orbax form written by `convert/to_flax.py` (`config.json` + `params/`). No torch import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.dtypes import parse_dtype
from mv2_jax.weights.mapping import convert_state_dict
from mv2_jax.weights.registry import family_for, param_shapes
from mv2_jax.weights.safetensors_io import read_weights_folder

ORBAX_PARAMS_DIR = "params"


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a component folder, with errors that say what to point at instead."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder}: expected a component folder (config.json + weights), "
            "got a file; single-file checkpoints go through convert/to_flax.py"
        )
    config_path = folder / "config.json"
    if not config_path.exists():
        if (folder / "model_index.json").exists():
            subs = sorted(p.name for p in folder.iterdir() if (p / "config.json").exists())
            raise FileNotFoundError(
                f"{folder} is a pipeline folder; load one of its components "
                f"({', '.join(subs)}) or use mv2_jax.load_pipeline"
            )
        raise FileNotFoundError(
            f"{folder}: no config.json; point at a diffusers/transformers "
            "component folder (e.g. .../unet or .../text_encoder)"
        )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e


def build_module(config: dict[str, Any], dtype=jnp.float32, where: str = "config.json"):
    """(module, family) for a config; params in `dtype`, compute in `dtype`."""
    _, family = family_for(config, where)
    return family.build(config, dtype), family


def load_component(
    path: str | os.PathLike,
    dtype=jnp.float32,
    shardings=None,
    *,
    param_dtype=None,
    variant: str | None = None,
) -> tuple[nn.Module, dict]:
    """Load a component folder. Returns `(module, params)`; call
    `module.apply({"params": params}, ...)` with the contract signatures of DESIGN.md.

    `dtype` is the compute dtype, `param_dtype` the params' (default: `dtype`); both take
    dtype names too ("bf16", "float32", …). `variant` ("fp16", …) reads
    `{stem}.{variant}.safetensors` as diffusers does (`read_weights_folder`). `shardings` (a
    tree like the params, or one sharding) places each param's shards straight onto their
    devices; None puts the params on the default device."""
    folder = Path(path)
    config = read_config(folder)
    dtype = parse_dtype(dtype)
    param_dtype = dtype if param_dtype is None else parse_dtype(param_dtype)
    module, family = build_module(config, dtype, where=str(folder / "config.json"))
    if param_dtype != dtype:
        module = module.clone(param_dtype=param_dtype)
    shapes = param_shapes(module, family)
    if (folder / ORBAX_PARAMS_DIR).is_dir():
        from mv2_jax.weights.orbax_io import restore_params

        params = restore_params(
            folder / ORBAX_PARAMS_DIR, shapes, dtype=param_dtype, shardings=shardings
        )
    else:
        state = read_weights_folder(folder, family.weights_stem, variant)
        place = _placer(shapes, shardings)
        params = convert_state_dict(
            state,
            shapes,
            family.rules,
            dtype=param_dtype,
            what=str(folder),
            place=place,
            hints=family.hints,
        )
    return module, params


def _placer(shapes, shardings):
    """Each converted tensor goes to its devices at once (a device receives only its own
    shards), so host memory holds one converted tensor at a time."""
    if shardings is None:
        return lambda path, value: jnp.asarray(value)
    from mv2_jax.weights.orbax_io import flat_shardings

    flat = flat_shardings(shardings, shapes)
    return lambda path, value: jax.device_put(value, flat[path])
