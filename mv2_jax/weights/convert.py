"""Converting weights to the orbax form: component folders, whole pipeline folders and single-file
checkpoints → `config.json` + `params/` per component (what `load_component` reads back), with
the tokenizer / scheduler folders of a pipeline copied as they are. `convert/to_flax.py` is its CLI.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mv2_jax.dtypes import parse_dtype
from mv2_jax.weights.load import ORBAX_PARAMS_DIR, build_module, read_config
from mv2_jax.weights.mapping import convert_state_dict
from mv2_jax.weights.new_folder import new_folder
from mv2_jax.weights.orbax_io import save_params
from mv2_jax.weights.registry import family_for, param_shapes
from mv2_jax.weights.safetensors_io import read_weights_folder

Log = Callable[[str], None]


def convert_state(
    config: Mapping[str, Any], state: Mapping, dtype=jnp.float32, what: str = ""
) -> dict:
    """diffusers/transformers-layout tensors → Flax params (numpy, in `dtype`), strictly."""
    module, family = build_module(dict(config), dtype, where=what or "config.json")
    shapes = param_shapes(module, family)
    return convert_state_dict(
        state, shapes, family.rules, dtype=dtype, what=what or "checkpoint", hints=family.hints
    )


def write_component(out: str | os.PathLike, config: Mapping[str, Any], params: Mapping) -> Path:
    """`out/config.json` + `out/params/` (orbax)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    save_params(out / ORBAX_PARAMS_DIR, params)
    return out


def _summary(name: str, config: Mapping, params: Mapping, out: Path) -> str:
    leaves = traverse_util.flatten_dict(dict(params)).values()
    count = sum(int(np.prod(p.shape)) for p in leaves)
    size = sum(p.nbytes for p in leaves)
    kind = config.get("_class_name") or config.get("architectures", ["?"])[0]
    return f"{name}: {kind}, {count / 1e6:.2f}M params, {size / 2**20:.1f} MiB → {out}"


def convert_component_folder(src, out, dtype=jnp.float32, log: Log = print, name: str = "") -> Path:
    """A diffusers/transformers component folder (config.json + safetensors) → orbax form."""
    src, out = Path(src), Path(out)
    config = read_config(src)
    _, family = family_for(config, str(src / "config.json"))
    state = read_weights_folder(src, family.weights_stem)
    params = convert_state(config, state, dtype, what=str(src))
    write_component(out, config, params)
    log(_summary(name or src.name, config, params, out))
    return out


def convert_pipeline_folder(
    src, out, dtype=jnp.float32, log: Log = print, skip: tuple[str, ...] = ()
) -> Path:
    """A diffusers pipeline folder (model_index.json) → the same layout, models in orbax form;
    folders without a model config (tokenizer, scheduler, …) are copied as they are; the
    components named in `skip` are left for the caller to write."""
    src, out = Path(src), Path(out)
    index = json.loads((src / "model_index.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    if _image_unet_with_motion_adapter(src, index) and "unet" not in skip:
        # An AnimateDiff folder with the SD UNet and a motion adapter apart: write the merged
        # motion UNet, as diffusers' AnimateDiffPipeline holds it (the adapter is inside it).
        from mv2_jax.weights.motion import load_motion_unet

        _, params, config = load_motion_unet(src / "unet", src / "motion_adapter", dtype)
        write_component(out / "unet", config, params)
        log(_summary("unet (+ motion_adapter)", config, params, out / "unet"))
        index.update(unet=["diffusers", "UNetMotionModel"], motion_adapter=[None, None])
        skip = (*skip, "unet")
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        if name in skip:
            continue
        sub = src / name
        if not sub.is_dir():
            log(f"{name}: listed in model_index.json but {sub} is missing; skipped")
        elif (sub / "config.json").exists():
            try:
                family_for(read_config(sub), str(sub / "config.json"))
            except NotImplementedError as e:
                # Keep the pipeline loadable: the unsupported part (e.g. a safety checker) is
                # left out and marked absent, as diffusers does for optional components.
                log(f"{name}: skipped, {e}")
                index[name] = [None, None]
                continue
            convert_component_folder(sub, out / name, dtype, log, name=name)
        else:
            shutil.copytree(sub, out / name)
            log(f"{name}: copied ({entry[1]})")
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def _image_unet_with_motion_adapter(src: Path, index: Mapping) -> bool:
    adapter = index.get("motion_adapter") or [None]
    unet = src / "unet" / "config.json"
    return (
        adapter[0] is not None
        and (src / "motion_adapter").is_dir()
        and unet.is_file()
        and read_config(src / "unet").get("_class_name") == "UNet2DConditionModel"
    )


def convert_single_file(
    path, out, config=None, model_type: str | None = None, dtype=jnp.float32, log: Log = print
) -> Path:
    """An original SD1.x/2.x/SDXL checkpoint → a pipeline folder (or a component folder when
    `config` is a component's folder), via diffusers' key converters (needs torch + diffusers)."""
    from mv2_jax.weights.single_file import open_single_file

    out = Path(out)
    ckpt = open_single_file(path, config=config, model_type=model_type)
    origin = f"model type {ckpt.model_type}" if ckpt.model_type else "config"
    log(f"{ckpt.path.name}: {origin}, component configs from {ckpt.config_folder}")
    if "" in ckpt.configs:  # one component's config: write that component only
        return _convert_one(ckpt, "", out, dtype, log, required=True)
    index = json.loads((ckpt.config_folder / "model_index.json").read_text())
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = ckpt.config_folder / name
        if name in ckpt.configs and not ckpt.can_hold(name):
            # e.g. a safety checker: never in single files; marked absent, as diffusers allows.
            log(f"{name}: a {entry[1]} is not part of single-file checkpoints; left out")
            index[name] = [None, None]
        elif name in ckpt.configs:
            _convert_one(ckpt, name, out / name, dtype, log)
        elif sub.is_dir():
            shutil.copytree(sub, out / name)
            log(f"{name}: copied from {sub}")
        else:
            log(
                f"{name}: not in {ckpt.config_folder}; copy the model's `{name}/` folder "
                f"(e.g. from its diffusers repo) into {out}"
            )
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def _convert_one(ckpt, name: str, out: Path, dtype, log: Log, required: bool = False):
    label = name or ckpt.path.name
    state = ckpt.diffusers_state(name)
    if state is None:
        message = f"{label}: not in {ckpt.path}"
        if required:
            raise ValueError(message + "; pass the config of a component the file holds")
        log(message + "; skipped (copy a converted one into place)")
        return None
    config = ckpt.configs[name]
    params = convert_state(config, state, dtype, what=f"{ckpt.path} [{label}]")
    write_component(out, config, params)
    log(_summary(label, config, params, out))
    return out


def convert_path(
    src,
    out,
    *,
    config=None,
    model_type: str | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    motion_adapter=None,
    loras: Sequence[tuple[str | os.PathLike, float]] = (),
    log: Log = print,
) -> Path:
    """Convert whatever `src` is (component folder, pipeline folder or single file) into `out`;
    with `motion_adapter`, `src` is an SD pipeline or UNet folder to add motion modules to;
    `loras` ((path, scale) each) are fused into the converted pipeline's unet / text encoders."""
    src, out = Path(src), Path(out)
    jdtype = parse_dtype(dtype)  # a clear error for an unknown name, before any work
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_dir() and (config is not None or model_type is not None):
        raise ValueError("--config / --model-type are for single-file checkpoints only")
    if motion_adapter is not None and not src.is_dir():
        raise ValueError(
            "--motion-adapter adds motion modules to a diffusers SD pipeline or UNet folder; "
            f"{src} is a file (convert a single-file SD checkpoint first, then add them)"
        )
    if config is not None and model_type is not None:
        raise ValueError("pass --config or --model-type, not both: the config folder decides")
    if src.is_dir() and not ((src / "model_index.json").exists() or (src / "config.json").exists()):
        read_config(src)  # raises, saying what the folder lacks
    adapters = _read_loras(src, loras, motion_adapter)  # a misfit stops before out is touched
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out}: exists and is not empty; pass --overwrite or a new --out"
            )
        if out.resolve() in (src.resolve(), *src.resolve().parents):
            raise ValueError(f"{out}: would delete the input {src}; choose another --out")
        shutil.rmtree(out)
    elif out.is_dir():
        out.rmdir()  # an empty folder: taken as the place to write
    with new_folder(out, "convert") as partial:  # no half-converted folder that looks complete

        def log_final(line: str) -> None:  # name the folder as it will be
            log(line.replace(str(partial), str(out)))

        if motion_adapter is not None:
            from mv2_jax.weights.animatediff import convert_with_motion_adapter

            convert_with_motion_adapter(src, motion_adapter, partial, jdtype, log_final)
        elif src.is_file():
            convert_single_file(src, partial, config, model_type, jdtype, log_final)
        elif (src / "model_index.json").exists():
            convert_pipeline_folder(src, partial, jdtype, log_final)
        else:
            convert_component_folder(src, partial, jdtype, log_final)
        if adapters:
            from mv2_jax.lora.folder import fuse_into_folder

            fuse_into_folder(partial, adapters, jdtype, log_final)
    return out


def _read_loras(src: Path, loras, motion_adapter) -> list:
    """The LoRAs read, and checked against `src`'s component configs where they are the
    output's (a pipeline folder whose UNet gains no motion modules): a misfit stops here."""
    if not loras:
        return []
    from mv2_jax.lora.folder import check_folder_loras, read_loras

    adapters = read_loras(loras)
    if src.is_dir() and not (src / "model_index.json").exists():
        raise ValueError(
            f"--lora: {src} is one component's folder; LoRAs are fused into a converted "
            "pipeline (a diffusers pipeline folder or a single-file checkpoint)"
        )
    if src.is_dir() and motion_adapter is None and not (src / "motion_adapter").is_dir():
        check_folder_loras(src, adapters)
    return adapters
