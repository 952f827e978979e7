"""A LoRA run's factors → diffusers' `pytorch_lora_weights.safetensors`, as its
`save_lora_weights` writes it: peft keys `unet.<torch module>.lora_A.weight` `[r, in(, kh, kw)]`
and `….lora_B.weight` `[out, r(, 1, 1)]`, and the peft `LoraConfig` (r, lora_alpha,
target_modules) in the file's `lora_adapter_metadata`, which diffusers' `load_lora_weights`
builds its adapter from and `mv2_jax.lora.read_lora` reads alpha from.

    python -m mv2_jax.training.export --workdir runs/lora --out models/lora --lora-only

The torch module names invert the family's PyTorch→Flax rules (`module_torch_name`): the
UNet's for t2i, diffusers' `UNetMotionModel` names for the i2v / v2v motion UNet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from flax import traverse_util

from mv2_jax.lora.leaves import DOWN, UP, lora_leaves
from mv2_jax.lora.read import FOLDER_FILES
from mv2_jax.lora.resolve import module_torch_name
from mv2_jax.training.checkpoint import model_stage, restore_params, run_config
from mv2_jax.training.lora import LoraSettings, lora_settings
from mv2_jax.weights.load import read_config
from mv2_jax.weights.mapping import KeyMap
from mv2_jax.weights.new_folder import check_new_folder, new_folder
from mv2_jax.weights.registry import family_for

# The class whose PyTorch names a stage's `unet` params take.
UNET_CLASSES = {"t2i": "UNet2DConditionModel", "i2v": "UNetMotionModel", "v2v": "UNetMotionModel"}
# Dense kernels that diffusers holds as 1×1 convolutions unless `use_linear_projection`.
_CONV_PROJECTIONS = re.compile(r"(^|/)attentions_\d+/proj_(in|out)$")


def diffusers_lora_state(
    unet_params, settings: LoraSettings, unet_class: str, linear_projection: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(state dict, safetensors metadata) of the LoRA factors in `unet_params` (a UNet's params
    with the factors beside their kernels)."""
    flat = traverse_util.flatten_dict(dict(unet_params))
    base = {p: v for p, v in flat.items() if p[-1] not in (DOWN, UP)}
    keymap = KeyMap(
        traverse_util.unflatten_dict(base), family_for({"_class_name": unet_class})[1].rules
    )
    state, names = {}, []
    for module, (down, up) in lora_leaves(unet_params).items():
        name = module_torch_name(keymap, module)
        if name is None:
            raise ValueError(f"{'/'.join(module)}: no {unet_class} module maps to it")
        down, up = np.asarray(down, np.float32), np.asarray(up, np.float32)
        lora_a = down.T if down.ndim == 2 else down.transpose(3, 2, 0, 1)  # [r, in, kh, kw]
        lora_b = up.T if down.ndim == 2 else up.T[:, :, None, None]  # [out, r, 1, 1]
        if down.ndim == 2 and not linear_projection and _CONV_PROJECTIONS.search("/".join(module)):
            lora_a, lora_b = lora_a[:, :, None, None], lora_b[:, :, None, None]
        state[f"unet.{name}.lora_A.weight"] = np.ascontiguousarray(lora_a)
        state[f"unet.{name}.lora_B.weight"] = np.ascontiguousarray(lora_b)
        names.append(name)
    config = {
        "r": settings.rank,
        "lora_alpha": settings.alpha or settings.rank,
        "target_modules": sorted(names),
        "use_rslora": False,
        "use_dora": False,
    }
    adapter = {f"unet.{key}": value for key, value in config.items()}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(adapter, sort_keys=True)}
    return state, metadata


def export_lora(workdir: str | Path, out: str | Path, step: int | None = None, ema=True) -> Path:
    """Write the LoRA of the run in `workdir` (its latest checkpoint unless `step`; the EMA
    unless `ema=False`) as `out/pytorch_lora_weights.safetensors` (`out` must not exist)."""
    from safetensors.numpy import save_file

    workdir, out = Path(workdir), check_new_folder(out)
    config = run_config(workdir)
    settings = lora_settings(config)
    if settings is None:
        raise ValueError(f"{workdir}: not a LoRA run (config.model.lora.rank is 0)")
    stage = model_stage(config)
    params = restore_params(workdir, step, ema)
    unet = params if stage == "t2i" else params["unet"]
    if stage != "t2i" and (others := [k for k in params if k != "unet" and lora_leaves(params[k])]):
        raise ValueError(f"LoRA factors on {others}: a diffusers LoRA file holds the UNet's")
    pipeline = Path(config.model.pipeline) if config.model.pipeline else workdir / "init_pipeline"
    linear = bool(read_config(pipeline / "unet").get("use_linear_projection", False))
    state, metadata = diffusers_lora_state(unet, settings, UNET_CLASSES[stage], linear)
    with new_folder(out) as partial:
        save_file(state, str(partial / FOLDER_FILES[0]), metadata=metadata)
    return out
