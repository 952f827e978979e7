"""PyTorch → Flax mapping for diffusers' `UNetMotionModel`, and an SD UNet + `MotionAdapter`
merged into one, as diffusers' `UNetMotionModel.from_unet2d(unet, motion_adapter)` does.

A `MotionAdapter` folder holds only the motion modules, under the same key names as the motion
UNet (`down_blocks.{i}.motion_modules.{j}.…`, `mid_block.motion_modules.{j}.…`,
`up_blocks.{i}.motion_modules.{j}.…`); the UNet2DConditionModel folder holds everything else
under the same names too, so merging is a union of the two state dicts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.weights.load import read_config
from mv2_jax.weights.mapping import Rule, convert_state_dict
from mv2_jax.weights.registry import Family, param_shapes, register
from mv2_jax.weights.safetensors_io import read_weights_folder
from mv2_jax.weights.unet import TIME_COND_PROJ_HINT, TRANSFORMER_RULES, unet_example_inputs

log = logging.getLogger(__name__)

# The sinusoidal frame positions are a fixed buffer, recomputed by the model.
MOTION_RULES = (*TRANSFORMER_RULES, Rule(r".*\.pos_embed\.pe", None))


def motion_example_inputs(unet: UNetMotionModel) -> tuple[tuple, dict]:
    """The smallest inputs that create every param: the 2D UNet's, as a one-frame video."""
    (sample, timesteps, context), kwargs = unet_example_inputs(unet)
    return (sample[:, None], timesteps, context), kwargs


MOTION = register(
    Family(
        build=lambda config, dtype: UNetMotionModel.from_config(
            config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=motion_example_inputs,
        rules=MOTION_RULES,
        hints=(TIME_COND_PROJ_HINT,),
    ),
    "UNetMotionModel",
)


def _expanded(value, n: int) -> list:
    return list(value) if isinstance(value, list | tuple) else [value] * n


def motion_config_from_unet2d(
    unet_config: Mapping[str, Any], adapter_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The `UNetMotionModel` config.json that `from_unet2d(unet, motion_adapter)` writes."""
    n = len(unet_config["down_block_types"])
    if len(adapter_config["block_out_channels"]) != n:
        raise ValueError(
            f"motion adapter has {len(adapter_config['block_out_channels'])} blocks, the UNet {n}"
        )
    if list(adapter_config["block_out_channels"]) != list(unet_config["block_out_channels"]):
        raise ValueError(
            f"motion adapter block_out_channels {adapter_config['block_out_channels']} differ "
            f"from the UNet's {unet_config['block_out_channels']}"
        )
    adapter_layers = adapter_config.get("motion_layers_per_block", 2)
    if _expanded(unet_config.get("layers_per_block", 2), n) != _expanded(adapter_layers, n):
        raise ValueError("motion adapter and UNet have different numbers of layers per block")
    if adapter_config.get("conv_in_channels"):
        raise NotImplementedError("motion adapters with their own conv_in (PIA) are not supported")
    if unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise NotImplementedError(f"UNet mid_block_type {unet_config['mid_block_type']!r}")
    groups = adapter_config.get("motion_norm_num_groups", 32)
    if groups != unet_config.get("norm_num_groups", 32):
        # as in diffusers, the motion modules take the UNet's norm_num_groups
        log.warning(
            "motion_norm_num_groups=%s differs from the UNet's norm_num_groups=%s; "
            "using the UNet's (as diffusers does)",
            groups,
            unet_config.get("norm_num_groups", 32),
        )

    def kind(block_type: str, direction: str) -> str:
        return ("CrossAttn" if "CrossAttn" in block_type else "") + f"{direction}BlockMotion"

    config = {k: v for k, v in unet_config.items() if k in _MOTION_KEYS}
    config.update(
        _class_name="UNetMotionModel",
        down_block_types=[kind(t, "Down") for t in unet_config["down_block_types"]],
        up_block_types=[kind(t, "Up") for t in unet_config["up_block_types"]],
        motion_num_attention_heads=adapter_config.get("motion_num_attention_heads", 8),
        motion_max_seq_length=adapter_config.get("motion_max_seq_length", 32),
        use_motion_mid_block=adapter_config.get("use_motion_mid_block", True),
        layers_per_block=adapter_layers,
        temporal_transformer_layers_per_mid_block=adapter_config.get(
            "motion_transformer_layers_per_mid_block", 1
        ),
        temporal_transformer_layers_per_block=adapter_config.get(
            "motion_transformer_layers_per_block", 1
        ),
    )
    if not config.get("num_attention_heads"):  # diffusers #2011: attention_head_dim = heads
        config["num_attention_heads"] = unet_config.get("attention_head_dim", 8)
    return config


# UNet2DConditionModel config keys that UNetMotionModel also has (the rest are dropped).
_MOTION_KEYS = {
    "sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
    "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
    "use_linear_projection", "num_attention_heads", "encoder_hid_dim", "encoder_hid_dim_type",
    "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
    "time_cond_proj_dim",
}  # fmt: skip


def load_motion_unet(
    unet_folder: str | os.PathLike,
    motion_adapter_folder: str | os.PathLike,
    dtype=jnp.float32,
) -> tuple[UNetMotionModel, dict, dict[str, Any]]:
    """An SD `UNet2DConditionModel` folder plus a `MotionAdapter` folder (AnimateDiff) →
    `(module, params, config)`, the motion UNet that diffusers' `from_unet2d` builds; `config`
    is its config.json (to save the merged model next to the params). Strict like
    `load_component`: every param filled, every tensor used."""
    unet_folder, adapter_folder = Path(unet_folder), Path(motion_adapter_folder)
    adapter_config = read_config(adapter_folder)
    if adapter_config.get("_class_name") != "MotionAdapter":
        raise ValueError(f"{adapter_folder}: not a MotionAdapter folder")
    return merge_motion_unet(
        read_config(unet_folder),
        read_weights_folder(unet_folder, MOTION.weights_stem),
        adapter_config,
        read_weights_folder(adapter_folder, MOTION.weights_stem),
        dtype,
        what=f"{unet_folder} + {adapter_folder}",
    )


def merge_motion_unet(
    unet_config: Mapping[str, Any],
    unet_state: Mapping[str, Any],
    adapter_config: Mapping[str, Any],
    adapter_state: Mapping[str, Any],
    dtype=jnp.float32,
    what: str = "UNet + motion adapter",
) -> tuple[UNetMotionModel, dict, dict[str, Any]]:
    """`load_motion_unet` on configs and diffusers-layout state dicts already read (e.g. an
    adapter converted from an original AnimateDiff checkpoint)."""
    config = motion_config_from_unet2d(unet_config, adapter_config)
    module = MOTION.build(config, dtype)
    if not all(".motion_modules." in key for key in adapter_state):
        stray = sorted(k for k in adapter_state if ".motion_modules." not in k)[:5]
        raise ValueError(f"{what}: adapter keys outside the motion modules, e.g. {stray}")
    clash = sorted(set(unet_state) & set(adapter_state))
    if clash:
        raise ValueError(f"{what}: the UNet already holds motion modules, e.g. {clash[:3]}")
    params = convert_state_dict(
        {**unet_state, **adapter_state},
        param_shapes(module, MOTION),
        MOTION.rules,
        dtype=dtype,
        what=what,
        place=lambda path, value: jnp.asarray(value),
        hints=MOTION.hints,
    )
    return module, params, config
