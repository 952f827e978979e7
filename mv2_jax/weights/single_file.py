"""Original single-file checkpoints (SD1.x / SD2.x / SDXL, LDM/SGM layout) → one diffusers-layout
state dict per component, through diffusers' own key converters; the family rules then map those
to Flax. Needs the `[convert]` extra (torch + diffusers); `.ckpt` only via `weights_only` loads.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ml_dtypes
import numpy as np

from mv2_jax.weights.load import read_config
from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.safetensors_io import CheckpointFileError, read_safetensors

DEFAULT_CONFIGS = Path(__file__).parent / "single_file_configs"
# Our names for the default config folders shipped in DEFAULT_CONFIGS.
MODEL_TYPES = {
    "sd15": "Stable Diffusion 1.x (CLIP ViT-L/14 text encoder)",
    "sd2_512": "Stable Diffusion 2.x base, 512 px, epsilon prediction",
    "sd2_768v": "Stable Diffusion 2.x, 768 px, v-prediction",
    "sdxl_base": "SDXL 1.0 base (CLIP ViT-L/14 + OpenCLIP ViT-bigG/14)",
    "sdxl_refiner": "SDXL 1.0 refiner (OpenCLIP ViT-bigG/14 only)",
}
# diffusers' `infer_diffusers_model_type` names → ours.
_FROM_DIFFUSERS = {
    "v1": "sd15",
    "v2": "sd2_768v",
    "xl_base": "sdxl_base",
    "xl_refiner": "sdxl_refiner",
}
# SD 2.x weights do not say their prediction type; like diffusers, take the release step of the
# 512 px ε-model as the sign of it, and v-prediction (SD 2.1 768) otherwise.
_SD2_BASE_GLOBAL_STEP = 875000
_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# The model classes an SD1.x / SD2.x / SDXL single file holds.
SINGLE_FILE_CLASSES = (
    "UNet2DConditionModel",
    "AutoencoderKL",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
)


class UnknownModelTypeError(ValueError):
    """A single-file checkpoint with no default config here: pass a config folder instead."""


def _converters():
    try:
        import torch  # noqa: F401
        from diffusers.loaders import single_file_utils
    except ImportError as e:
        raise ImportError(
            "reading single-file checkpoints needs PyTorch and diffusers: "
            "pip install torch, then pip install 'mv2-jax[convert]'"
        ) from e
    return single_file_utils


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
    """(flat state dict of torch tensors, training step if recorded) of one checkpoint file."""
    _converters()
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a single-file checkpoint")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        read_safetensors(path)  # checks header and size, naming the file if it is truncated
        from safetensors.torch import load_file

        return load_file(path), None
    if suffix not in _SUFFIXES:
        raise CheckpointFileError(
            f"{path}: unknown checkpoint format {suffix!r}; expected one of {_SUFFIXES}"
        )
    try:
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as e:
        raise CheckpointFileError(
            f"{path}: holds Python objects besides tensors, which are not unpickled here "
            f"(torch.load weights_only=True refused: {str(e).splitlines()[0]}). Re-save its "
            "state dict as .safetensors where the file is trusted."
        ) from e
    except Exception as e:
        raise CheckpointFileError(
            f"{path}: cannot be read ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt, re-download it"
        ) from e
    global_step = None
    # Lightning checkpoints nest the weights under "state_dict", next to "global_step".
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        global_step = state.get("global_step", global_step)
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointFileError(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, global_step


def detect_model_type(
    checkpoint: dict[str, Any], global_step: int | None = None, where: str = "checkpoint"
) -> str:
    """One of MODEL_TYPES, read off keys and shapes by diffusers' `infer_diffusers_model_type`."""
    sfu = _converters()
    if not any(k.startswith(sfu.LDM_UNET_KEY) for k in checkpoint):
        if any(
            k.startswith(("down_blocks.", "encoder.down_blocks.", "text_model."))
            for k in checkpoint
        ):
            raise UnknownModelTypeError(
                f"{where}: already in diffusers layout (one component, no config); put it in a "
                "folder next to that component's config.json and convert the folder"
            )
        raise UnknownModelTypeError(
            f"{where}: no `{sfu.LDM_UNET_KEY}*` keys, so not an original SD1.x / SD2.x / SDXL "
            "checkpoint; convert a diffusers folder instead"
        )
    kind = sfu.infer_diffusers_model_type(checkpoint)
    if kind == "v2" and global_step == _SD2_BASE_GLOBAL_STEP:
        return "sd2_512"
    if kind not in _FROM_DIFFUSERS:
        raise UnknownModelTypeError(
            f"{where}: detected model type {kind!r}, for which mv2_jax ships no default configs "
            f"(it has {sorted(MODEL_TYPES)}). Pass --config with a diffusers-format folder "
            "holding this model's component configs."
        )
    return _FROM_DIFFUSERS[kind]


def component_configs(folder: str | os.PathLike) -> dict[str, dict]:
    """`{component: config}` of a diffusers pipeline folder (model components only), or
    `{"": config}` of a single component folder."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return {"": read_config(folder)}
    index_path = folder / "model_index.json"
    if not index_path.exists():
        raise FileNotFoundError(
            f"{folder}: neither model_index.json (pipeline) nor config.json (component); "
            "--config must point at a diffusers-format config folder"
        )
    index = json.loads(index_path.read_text())
    return {
        name: read_config(folder / name)
        for name, entry in index.items()
        if not name.startswith("_")
        and isinstance(entry, list)
        and entry[0] is not None
        and (folder / name / "config.json").exists()
    }


@dataclass
class SingleFileCheckpoint:
    """A checkpoint file split by component: `configs` from the config folder, and
    `diffusers_state(name)` for each component's diffusers-layout tensors (numpy)."""

    path: Path
    model_type: str | None
    config_folder: Path
    configs: dict[str, dict]
    checkpoint: dict[str, Any] = field(repr=False)

    def can_hold(self, name: str) -> bool:
        """Whether single-file checkpoints carry a component of this class at all."""
        return _class_name(self.configs[name]) in SINGLE_FILE_CLASSES

    def diffusers_state(self, name: str) -> dict[str, np.ndarray] | None:
        """The component's tensors in diffusers layout; None if the file does not hold it."""
        what = f"{self.path} [{name or _class_name(self.configs[name])}]"
        state = _convert_component(self.checkpoint, self.configs[name], what)
        return None if state is None else {k: _to_numpy(v) for k, v in state.items()}


def open_single_file(
    path: str | os.PathLike,
    config: str | os.PathLike | None = None,
    model_type: str | None = None,
) -> SingleFileCheckpoint:
    """Read `path`; its component configs come from `config` (a diffusers pipeline or component
    folder), else from the shipped defaults for `model_type` (detected when None)."""
    path = Path(path)
    checkpoint, global_step = read_checkpoint(path)
    if config is None:
        if model_type is None:
            model_type = detect_model_type(checkpoint, global_step, where=str(path))
        if model_type not in MODEL_TYPES:
            raise UnknownModelTypeError(
                f"model type {model_type!r} unknown; choose one of {sorted(MODEL_TYPES)} "
                "or pass --config"
            )
        config = DEFAULT_CONFIGS / model_type
    config = Path(config)
    configs = component_configs(config)
    return SingleFileCheckpoint(path, model_type, config, configs, checkpoint)


def _class_name(config: dict) -> str | None:
    return config.get("_class_name") or (config.get("architectures") or [None])[0]


def _convert_component(checkpoint, config: dict, what: str):
    sfu = _converters()
    name = _class_name(config)
    if name == "UNet2DConditionModel":
        if not any(k.startswith(sfu.LDM_UNET_KEY) for k in checkpoint):
            return None
        state = sfu.convert_ldm_unet_checkpoint(checkpoint, config)
        _check_all_used(checkpoint, sfu.LDM_UNET_KEY, state, what)
        return state
    if name == "AutoencoderKL":
        present = [p for p in sfu.LDM_VAE_KEYS if any(k.startswith(p) for k in checkpoint)]
        if not present:
            return None
        state = sfu.convert_ldm_vae_checkpoint(checkpoint, config)
        # diffusers takes the last prefix present; LDM training checkpoints keep the VAE's
        # discriminator under `loss.`, which inference does not use.
        _check_all_used(checkpoint, present[-1], state, what, ignore=f"{present[-1]}loss.")
        return state
    if name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        return _convert_text_encoder(sfu, checkpoint, config["hidden_size"])
    raise NotImplementedError(f"{what}: a {name} cannot be read from a single-file checkpoint")


def _convert_text_encoder(sfu, checkpoint, hidden_size: int):
    """CLIP-L (transformers layout under a prefix) or OpenCLIP (its own layout), chosen by the
    keys present and the config's width, in diffusers' order (`create_diffusers_clip_model_from
    _ldm`); both keep transformers' `text_model.` prefix, which the CLIP rules accept."""
    keys = sfu.CHECKPOINT_KEY_NAMES

    def width(key: str) -> int | None:
        return checkpoint[key].shape[-1] if key in checkpoint else None

    if sfu.is_clip_model(checkpoint) or width(keys["clip_sdxl"]) == hidden_size:
        return sfu.convert_ldm_clip_checkpoint(checkpoint)
    # OpenCLIP fuses q/k/v; diffusers splits them by the width read off `text_model.config`.
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size))
    if sfu.is_open_clip_model(checkpoint):
        prefix = "cond_stage_model.model."
    elif width(keys["open_clip_sdxl"]) == hidden_size:
        prefix = "conditioner.embedders.1.model."
    elif sfu.is_open_clip_sdxl_refiner_model(checkpoint):
        prefix = "conditioner.embedders.0.model."
    else:
        return None
    return sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)


def _check_all_used(checkpoint, prefix: str, converted: dict, what: str, ignore=None) -> None:
    """diffusers' converters drop keys they have no place for; a tensor under `prefix` that
    reaches no output means the config does not describe the checkpoint. These converters only
    rename or slice, so each output is an input tensor or a view of one: same root tensor."""
    produced = {id(_root(tensor)) for tensor in converted.values()}
    unused = [
        key
        for key, tensor in checkpoint.items()
        if key.startswith(prefix)
        and id(_root(tensor)) not in produced
        and not (ignore and key.startswith(ignore))
    ]
    if unused:
        raise WeightMismatchError(
            what,
            [],
            sorted(unused),
            [],
            hint="  diffusers' converter found no place for these tensors: the config folder "
            "does not describe this checkpoint; pass the matching --config or --model-type.",
        )


def _root(tensor):
    # The tensor a view was cut from (safetensors' loaded tensors are themselves views of their
    # own flat buffers), else the tensor.
    return tensor if tensor._base is None else tensor._base


def _to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bf16; reinterpret the bits
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
