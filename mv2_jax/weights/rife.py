"""RIFE v4.0–4.6 `flownet.pkl` (IFNet state dict, Huang et al. 2022) → a FrameInterpolator
component folder (`config.json` + `diffusion_pytorch_model.safetensors`).

Our FrameInterpolator keeps RIFE v4's IFNet layout, so the mapping is small: the `module.`
prefix of a DataParallel save goes, ResConv's `beta [1,C,1,1]` becomes `[C]`, and each block's
transposed conv drops the 6th pixel-shuffled channel RIFE v4 computes and never reads (its
outputs are flow t→0, flow t→1, mask). v4.7+ IFNets add a feature encoder (`encode.*`,
16 more input channels per block), which our model does not have: they are refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mv2_jax.weights.new_folder import check_new_folder, new_folder
from mv2_jax.weights.vfi import WEIGHTS_STEM

_FLOW_AND_MASK = 5  # channels of an IFBlock's output that RIFE v4 reads
_BLOCK_KEY = re.compile(r"^block(\d+)\.(.+)$")


def rife_to_vfi(state: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """A RIFE v4.0–4.6 IFNet state dict → `(config, state dict)` of the FrameInterpolator
    that computes the same function (block widths, scales 8, 4, 2, 1 and residual-conv count
    read from the tensors; no refinement net)."""
    state = {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state.items()}
    encoder = sorted(k for k in state if k.startswith("encode."))
    if encoder:
        raise NotImplementedError(
            f"this IFNet has a feature encoder ({encoder[0]}, …): RIFE v4.7 or later. Only "
            "v4.0–4.6 flownet.pkl files (blocks on images, t, mask and flow alone) convert"
        )
    unexpected = sorted(k for k in state if not _BLOCK_KEY.match(k))
    if unexpected:
        raise ValueError(f"not a RIFE v4 IFNet state dict: unexpected keys {unexpected[:5]}")
    blocks = sorted({int(_BLOCK_KEY.match(k).group(1)) for k in state})
    if blocks != list(range(len(blocks))):
        raise ValueError(f"RIFE IFNet blocks must be numbered 0…n−1; found {blocks}")

    converted, channels, num_res = {}, [], set()
    for i in blocks:
        keys = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"block{i}.")}
        expected_in = 7 if i == 0 else 12  # frames + t (+ warped frames' mask and flow)
        conv_in = keys["conv0.0.0.weight"].shape[1] if "conv0.0.0.weight" in keys else None
        if conv_in != expected_in:
            raise ValueError(
                f"block{i}.conv0.0.0.weight takes {conv_in} input channels; RIFE v4.0–4.6 "
                f"blocks take {expected_in} (is this a v4.x IFNet?)"
            )
        channels.append(int(keys["conv0.1.0.weight"].shape[0]))
        num_res.add(len({k.split(".")[1] for k in keys if k.startswith("convblock.")}))
        for name, value in keys.items():
            if name.endswith(".beta"):
                value = value.reshape(-1)
            elif name.startswith("lastconv.0."):  # weight [C, 4·6, 4, 4], bias [4·6]
                outputs = 4 * _FLOW_AND_MASK  # pixel shuffle: channel k → k // 4
                axis = 1 if value.ndim == 4 else 0
                if value.shape[axis] < outputs:
                    raise ValueError(f"block{i}.{name}: {value.shape} has too few outputs")
                value = np.take(value, np.arange(outputs), axis=axis)
            converted[f"block{i}.{name}"] = np.ascontiguousarray(value)
    if len(num_res) != 1:
        raise ValueError(f"blocks differ in their number of residual convs: {sorted(num_res)}")
    config = {
        "_class_name": "FrameInterpolator",
        "block_channels": channels,
        "block_scales": [2 ** (len(blocks) - 1 - i) for i in range(len(blocks))],
        "num_res": num_res.pop(),
        "refine_channels": 0,
        "global_motion": False,  # RIFE's first block starts from zero flow
    }
    return config, converted


def read_rife_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`flownet.pkl` / `.pth` (through `torch.load(weights_only=True)`) or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected RIFE's flownet.pkl)")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path.name} needs torch (pip install torch)") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k: v.float().numpy() for k, v in state.items()}


def convert_rife(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """RIFE v4.0–4.6 weights at `path` → a FrameInterpolator folder `out`, which
    `mv2_jax.load_component` and `load_vfi_pipeline` read; `out` must not exist."""
    from safetensors.numpy import save_file

    out = check_new_folder(out, "convert")
    config, state = rife_to_vfi(read_rife_state_dict(path))
    with new_folder(out, "convert") as partial:
        (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(partial / f"{WEIGHTS_STEM}.safetensors"))
    return out
