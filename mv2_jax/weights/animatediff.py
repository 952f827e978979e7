"""Original AnimateDiff motion-module checkpoints (guoyww/AnimateDiff `mm_sd_v14/v15.ckpt`,
`mm_sd_v15_v2.ckpt`, `v3_sd15_mm.ckpt`, or their `.safetensors`) → a diffusers `MotionAdapter`
config and state dict, through diffusers' own key converter; `merge_motion_unet` then makes the
motion UNet. Needs torch + diffusers (the `[convert]` extra); `.ckpt` only via weights-only loads.

The files record no config: widths, layers per block, mid block and the positions' length are
read off the tensors; the head count (8 in every AnimateDiff release) cannot be, so it is an
argument.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from mv2_jax.weights.load import ORBAX_PARAMS_DIR, read_config
from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.motion import merge_motion_unet
from mv2_jax.weights.safetensors_io import read_weights_folder

# diffusers' `infer_diffusers_model_type` names of the motion-module files converted here.
VERSIONS = {
    "animatediff_v1": "AnimateDiff v1 (no mid block, 24 frame positions)",
    "animatediff_v2": "AnimateDiff v2 (motion mid block, 32 positions)",
    "animatediff_v3": "AnimateDiff v3 (no mid block, 32 positions)",
    "animatediff_sdxl_beta": "AnimateDiff SDXL beta",
}
_POSITIONS = re.compile(r"(.*)\.pos_encoder\.pe$")


def read_motion_adapter(
    path: str | os.PathLike, motion_num_attention_heads: int = 8
) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """`(version, MotionAdapter config, diffusers-layout numpy state)` of an original AnimateDiff
    motion-module file; a file of anything else stops with an error that says what it is."""
    from mv2_jax.weights.single_file import _converters, _to_numpy, read_checkpoint

    sfu = _converters()
    path = Path(path)
    checkpoint, _ = read_checkpoint(path)
    marker = sfu.CHECKPOINT_KEY_NAMES["animatediff"]
    if marker not in checkpoint:
        raise ValueError(
            f"{path}: not an AnimateDiff motion-module checkpoint (no `{marker}`); pass the "
            "motion module file (e.g. mm_sd_v15_v2.ckpt), or a diffusers MotionAdapter folder"
        )
    version = sfu.infer_diffusers_model_type(checkpoint)
    if version not in VERSIONS:
        raise NotImplementedError(
            f"{path}: a {version} checkpoint (SparseCtrl ControlNet), not motion modules; "
            f"supported: {', '.join(VERSIONS.values())}"
        )
    state = sfu.convert_animatediff_checkpoint_to_diffusers(checkpoint)
    config = adapter_config_from_state(state, checkpoint[marker].shape[1])
    config["motion_num_attention_heads"] = motion_num_attention_heads
    stray = sorted(
        k for k in state if not re.match(r"(down_blocks|up_blocks)\.\d+\.|mid_block\.", k)
    )
    if stray:
        raise WeightMismatchError(str(path), [], stray, [], hint="  not motion-module tensors")
    return version, config, {k: _to_numpy(v) for k, v in state.items()}


def adapter_config_from_state(state, max_seq_length: int) -> dict[str, Any]:
    """The diffusers `MotionAdapter` config.json that describes a diffusers-layout adapter state
    (what diffusers' single-file loader takes from the Hub; read off the tensors here)."""

    def count(pattern: str) -> int:
        return len({m[1] for k in state if (m := re.match(pattern, k))})

    blocks = count(r"down_blocks\.(\d+)\.")
    proj_in = "down_blocks.{}.motion_modules.0.proj_in.weight"
    widths = [int(state[proj_in.format(i)].shape[1]) for i in range(blocks)]
    layers = [count(rf"down_blocks\.{i}\.motion_modules\.(\d+)\.") for i in range(blocks)]
    depth = [
        count(rf"down_blocks\.{i}\.motion_modules\.0\.transformer_blocks\.(\d+)\.")
        for i in range(blocks)
    ]
    mid = count(r"mid_block\.motion_modules\.(\d+)\.")
    config = {
        "_class_name": "MotionAdapter",
        "block_out_channels": widths,
        "motion_layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "motion_transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
        "motion_max_seq_length": int(max_seq_length),
        "motion_norm_num_groups": 32,
        "use_motion_mid_block": mid > 0,
    }
    if mid:
        config["motion_mid_block_layers_per_block"] = mid
        config["motion_transformer_layers_per_mid_block"] = count(
            r"mid_block\.motion_modules\.0\.transformer_blocks\.(\d+)\."
        )
    return config


# AnimateDiff's motion modules were trained with linear betas; diffusers' AnimateDiff examples
# set these on the SD scheduler config (DDIM, linspace spacing).
ANIMATEDIFF_SCHEDULER = {
    "beta_schedule": "linear",
    "clip_sample": False,
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """`(config, diffusers-layout state, description)` of a diffusers MotionAdapter folder or
    an original AnimateDiff motion-module file."""
    path = Path(path)
    if path.is_dir():
        config = read_config(path)
        if config.get("_class_name") != "MotionAdapter":
            raise ValueError(f"{path}: not a MotionAdapter folder ({config.get('_class_name')})")
        return config, read_weights_folder(path, "diffusion_pytorch_model"), "MotionAdapter"
    version, config, state = read_motion_adapter(path)
    return config, state, VERSIONS[version]


def convert_with_motion_adapter(src, adapter, out, dtype=jnp.float32, log=print) -> Path:
    """An SD pipeline folder → an AnimateDiffPipeline folder (orbax), its `unet` the UNet merged
    with the motion modules and its scheduler set to AnimateDiff's betas; or an SD UNet folder
    → a UNetMotionModel component folder. `adapter`: an AnimateDiff file or MotionAdapter
    folder."""
    from mv2_jax.weights.convert import _summary, convert_pipeline_folder, write_component

    src, out = Path(src), Path(out)
    pipeline = (src / "model_index.json").exists()
    unet_folder = src / "unet" if pipeline else src
    unet_config = read_config(unet_folder)
    if (
        unet_config.get("_class_name") != "UNet2DConditionModel"
        or (unet_folder / ORBAX_PARAMS_DIR).is_dir()
    ):
        raise ValueError(
            f"{unet_folder}: motion modules are added to a diffusers UNet2DConditionModel "
            "folder (config.json + safetensors), not to a "
            f"{unet_config.get('_class_name')} {'in orbax form' if pipeline else ''}".rstrip()
        )
    adapter_config, adapter_state, kind = read_adapter(adapter)
    log(f"{Path(adapter).name}: {kind}")
    _, params, config = merge_motion_unet(
        unet_config,
        read_weights_folder(unet_folder, "diffusion_pytorch_model"),
        adapter_config,
        adapter_state,
        dtype,
        what=f"{unet_folder} + {adapter}",
    )
    if not pipeline:
        write_component(out, config, params)
        log(_summary(src.name, config, params, out))
        return out
    convert_pipeline_folder(src, out, dtype, log, skip=("unet",))
    write_component(out / "unet", config, params)
    log(_summary("unet", config, params, out / "unet"))
    index = json.loads((out / "model_index.json").read_text())
    for key in ("safety_checker", "requires_safety_checker"):  # not AnimateDiffPipeline's
        index.pop(key, None)
    index.update(
        _class_name="AnimateDiffPipeline",
        unet=["diffusers", "UNetMotionModel"],
        motion_adapter=[None, None],  # merged into the unet
    )
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    scheduler = out / "scheduler" / "scheduler_config.json"
    if scheduler.exists():
        scheduler_config = {**json.loads(scheduler.read_text()), **ANIMATEDIFF_SCHEDULER}
        scheduler.write_text(json.dumps(scheduler_config, indent=2) + "\n")
        log(f"scheduler: AnimateDiff's settings {ANIMATEDIFF_SCHEDULER}")
    return out
