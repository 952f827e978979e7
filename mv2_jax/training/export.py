"""A training run → a pipeline folder that `mv2_jax.load_pipeline` and `sample.py` read.

    python -m mv2_jax.training.export --workdir runs/i2v --out models/i2v [--step N] [--no-ema]
    python -m mv2_jax.training.export --workdir runs/lora --out models/lora --lora-only

The folder is the run's starting pipeline (VAE, text encoder, tokenizer, scheduler copied as
they are) with the trained components written in orbax form beside their `config.json`:
- t2i: `unet/` (a StableDiffusionPipeline folder);
- i2v: `unet/` (the motion UNet), `appearance_encoder/` (a spatial UNet2DConditionModel) and
  `controlnet/` (SparseCtrl RGB) when the run trained them, `_class_name` ImageToVideoPipeline;
- v2v: the same with the V2V UNet (low-res channels at conv_in, noise-level table) in `unet/`,
  `_class_name` VideoToVideoPipeline;
- vfi: no pipeline: the generator alone as a `FrameInterpolator` component folder
  (`mv2_jax.training.vfi.export_vfi`).
The EMA weights are exported unless `ema=False`. A LoRA run (`config.model.lora`) exports its
base with the LoRA fused in, or (`--lora-only`) the LoRA alone as a diffusers
`pytorch_lora_weights.safetensors` (`mv2_jax.training.lora_export`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.lora.leaves import fuse_lora_leaves
from mv2_jax.training.checkpoint import model_stage, restore_params, run_config
from mv2_jax.training.lora import lora_settings
from mv2_jax.weights.convert import write_component
from mv2_jax.weights.load import read_config
from mv2_jax.weights.new_folder import check_new_folder, new_folder

# Stages that are not a pipeline built on config.model.pipeline write their own folder:
# `export(workdir, out, step, ema) -> out`, imported when asked for.
OWN_EXPORTERS = {
    "vfi": "mv2_jax.training.vfi:export_vfi",
    "vae": "mv2_jax.training.vae:export_vae",
    "clip": "mv2_jax.training.clip:export_clip",
}

# The pipeline class of an exported video run (`model_index.json`'s `_class_name`).
VIDEO_PIPELINES = {"i2v": "ImageToVideoPipeline", "v2v": "VideoToVideoPipeline"}

# Module fields that say how to run a model, not what it is: never part of a config.json.
_RUNTIME_FIELDS = (
    "parent", "name", "dtype", "param_dtype", "remat_policy", "attention_implementation",
    "skip_motion_for_images",
)  # fmt: skip


def module_config(module) -> dict[str, Any]:
    """The `config.json` dict that builds `module` again (`load_component` reads it): its
    class name and every field that defines the model."""
    config = {"_class_name": type(module).__name__}
    for field in dataclasses.fields(module):
        if field.init and field.name not in _RUNTIME_FIELDS:
            value = getattr(module, field.name)
            config[field.name] = list(value) if isinstance(value, tuple) else value
    return config


def spatial_unet_config(motion_config: dict[str, Any]) -> dict[str, Any]:
    """The `UNet2DConditionModel` config of a motion UNet's spatial layers (whose params are
    `mv2_jax.models.appearance.spatial_params` of the motion UNet's)."""
    from mv2_jax.models.unet import UNet2DConditionModel

    fields = {f.name for f in dataclasses.fields(UNet2DConditionModel)} - set(_RUNTIME_FIELDS)
    config = {k: v for k, v in motion_config.items() if k in fields}
    for key in ("down_block_types", "up_block_types"):
        config[key] = [t.replace("Motion", "2D") for t in motion_config[key]]
    return {"_class_name": "UNet2DConditionModel", **config}


def export_pipeline(
    workdir: str | Path, out: str | Path, step: int | None = None, ema: bool = True
) -> Path:
    """Write the run in `workdir` (its latest checkpoint unless `step`) as a pipeline folder
    at `out` (which must not exist); returns `out`."""
    workdir, out = Path(workdir), check_new_folder(out)
    config = run_config(workdir)
    if config.stage in OWN_EXPORTERS:
        module, function = OWN_EXPORTERS[config.stage].split(":")
        return getattr(importlib.import_module(module), function)(workdir, out, step, ema)
    stage = model_stage(config)
    pipeline = Path(config.model.pipeline) if config.model.pipeline else workdir / "init_pipeline"
    params = restore_params(workdir, step, ema)
    lora = lora_settings(config)
    if lora is not None:  # the base with the LoRA fused in, in the base's dtype
        fused = fuse_lora_leaves(params, lora.multiplier, cast=True)
        params = jax.tree.map(np.asarray, fused)
    if stage == "t2i":
        components = {"unet": (read_config(pipeline / "unet"), params)}
        index_class = None
    elif stage in VIDEO_PIPELINES:
        components = _video_components(config, pipeline, params)
        index_class = VIDEO_PIPELINES[stage]
    else:
        raise NotImplementedError(f"exporting a {stage!r} run; supported: t2i, i2v, v2v")

    index = json.loads((pipeline / "model_index.json").read_text())
    with new_folder(out) as partial:
        for name, entry in index.items():
            if isinstance(entry, list) and entry[0] and name not in components:
                if name == "motion_adapter":  # merged into the exported motion UNet
                    index[name] = [None, None]
                elif (pipeline / name).is_dir():
                    shutil.copytree(pipeline / name, partial / name)
        for name, (component_config, component_params) in components.items():
            write_component(partial / name, component_config, component_params)
            index[name] = ["diffusers", component_config["_class_name"]]
        if index_class:
            index["_class_name"] = index_class
        (partial / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def _video_components(config, pipeline: Path, params: dict) -> dict:
    """i2v / v2v: the motion UNet, and the appearance encoder and ControlNet made from the I2V
    UNet (for v2v, the one inside its UNet)."""
    from mv2_jax.training.i2v import motion_unet_config, motion_unet_source, sparse_controlnet
    from mv2_jax.weights.motion import MOTION

    unet_config = motion_unet_config(*motion_unet_source(config, pipeline))
    backbone_config = unet_config
    controlnet_folder = Path(config.i2v.controlnet_from) if config.i2v.controlnet_from else None
    if config.stage == "v2v":
        from mv2_jax.training.v2v import controlnet_folder_of, v2v_unet_config
        from mv2_jax.weights.v2v import i2v_unet_from_v2v

        unet_config = v2v_unet_config(unet_config, config)
        backbone_config, _ = i2v_unet_from_v2v(unet_config, params["unet"])
        # The pipelines' default output size is sample_size latents: the frames the run saw
        # (whole, when it trained on patches of them: data.scale_to).
        vae = read_config(pipeline / "vae")
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        frame = max(config.data.get("scale_to", 0), config.data.height)
        unet_config = {**unet_config, "sample_size": frame // factor}
        controlnet_folder = controlnet_folder_of(config, pipeline)
    components = {"unet": (unet_config, params["unet"])}
    if "appearance" in params:
        appearance_config = spatial_unet_config(backbone_config)
        components["appearance_encoder"] = (appearance_config, params["appearance"])
    if "controlnet" in params:
        backbone = MOTION.build(backbone_config, jnp.float32)
        controlnet = sparse_controlnet(backbone, controlnet_folder)
        components["controlnet"] = (module_config(controlnet), params["controlnet"])
    return components


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mv2_jax.training.export",
        description="Write a train.py run as a pipeline folder for load_pipeline / sample.py.",
    )
    parser.add_argument("--workdir", required=True, help="the train.py --workdir of the run")
    parser.add_argument("--out", required=True, help="the new pipeline folder (must not exist)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument(
        "--no-ema", action="store_true", help="the trained weights instead of their EMA"
    )
    parser.add_argument(
        "--lora-only",
        action="store_true",
        help="a LoRA run: write OUT/pytorch_lora_weights.safetensors (diffusers' LoRA format, "
        "for load_lora_weights / sample.py --lora) instead of a pipeline folder",
    )
    args = parser.parse_args(argv)
    try:
        if args.lora_only:
            from mv2_jax.training.lora_export import export_lora

            out = export_lora(args.workdir, args.out, args.step, ema=not args.no_ema)
        else:
            out = export_pipeline(args.workdir, args.out, args.step, ema=not args.no_ema)
    except (OSError, ValueError, NotImplementedError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
