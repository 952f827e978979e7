"""`read_lora`: a LoRA file (or a folder holding one) → `LoraAdapter`.

`.safetensors` with numpy only (bf16 included); `.ckpt` / `.pt` / `.pth` / `.bin` (AnimateDiff's
original motion LoRAs) only through `torch.load(weights_only=True)`, with the `[convert]` extra,
as single-file checkpoints are read (`mv2_jax.weights.single_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

from mv2_jax.lora.adapter import LoraAdapter
from mv2_jax.lora.formats import parse_lora
from mv2_jax.weights.safetensors_io import CheckpointFileError, read_safetensors

# The names diffusers' `save_lora_weights` and the published motion LoRAs use, in that order.
FOLDER_FILES = ("pytorch_lora_weights.safetensors", "diffusion_pytorch_model.safetensors")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_lora(path: str | os.PathLike) -> LoraAdapter:
    """Read one LoRA file of any layout in `mv2_jax.lora.formats` (a folder: its
    `pytorch_lora_weights.safetensors`, or its one `.safetensors`)."""
    path = _lora_file(Path(path))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = read_safetensors(path)  # header and sizes checked: a truncated file says so
        state = {name: tensors[name] for name in tensors}
        return parse_lora(state, tensors.metadata, source=str(path))
    if suffix in TORCH_SUFFIXES:
        from mv2_jax.weights.single_file import _to_numpy, read_checkpoint

        checkpoint, _ = read_checkpoint(path)
        state = {name: _to_numpy(tensor) for name, tensor in checkpoint.items()}
        return parse_lora(state, source=str(path))
    raise CheckpointFileError(
        f"{path}: unknown LoRA file type {suffix!r}; expected .safetensors "
        f"(or {', '.join(TORCH_SUFFIXES)} with the [convert] extra)"
    )


def _lora_file(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such LoRA file or folder")
    if not path.is_dir():
        return path
    for name in FOLDER_FILES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"{path}: a folder without {FOLDER_FILES[0]}; it holds "
        f"{[p.name for p in candidates] or 'no .safetensors'}: pass the LoRA file itself"
    )
