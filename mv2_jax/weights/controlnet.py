"""PyTorch → Flax mapping for diffusers' `ControlNetModel` and `SparseControlNetModel`, and a new
ControlNet initialised from a UNet, as their `from_unet` classmethods do.

Param names are diffusers' with `.` → `_`, so the UNet's and motion UNet's rules cover them:
`controlnet_cond_embedding.blocks.0.weight` → `controlnet_cond_embedding/blocks_0/kernel`,
`controlnet_down_blocks.3.weight` → `controlnet_down_blocks_3/kernel`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.linen import meta

from mv2_jax.models.controlnet import ControlNetModel, SparseControlNetModel
from mv2_jax.models.unet import UNet2DConditionModel
from mv2_jax.weights.motion import MOTION_RULES
from mv2_jax.weights.registry import Family, register
from mv2_jax.weights.unet import TRANSFORMER_RULES, unet_example_inputs


def controlnet_example_inputs(net: ControlNetModel) -> tuple[tuple, dict]:
    """The smallest inputs that create every param: the UNet's plus a condition to match."""
    (sample, timesteps, context), kwargs = unet_example_inputs(net)
    size = sample.shape[1] * net._condition_factor()
    cond = jnp.zeros((1, size, size, net.conditioning_channels))
    return (sample, timesteps, context, cond), kwargs


def sparse_controlnet_example_inputs(net: SparseControlNetModel) -> tuple[tuple, dict]:
    """One-frame video, its condition and (with `concat_conditioning_mask`) the mask."""
    size = 2 ** (len(net.down_block_types) - 1)
    cond_size = size * net._condition_factor(net.use_simplified_condition_embedding)
    cross = net.cross_attention_dim
    args = (
        jnp.zeros((1, 1, size, size, net.in_channels)),
        jnp.zeros((1,)),
        jnp.zeros((1, 1, cross if isinstance(cross, int) else cross[0])),
        jnp.zeros((1, 1, cond_size, cond_size, net.conditioning_channels)),
    )
    mask = jnp.zeros((1, 1, cond_size, cond_size, 1)) if net.concat_conditioning_mask else None
    return (*args, 1.0, mask), {}


CONTROLNET = register(
    Family(
        build=lambda config, dtype: ControlNetModel.from_config(
            config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=controlnet_example_inputs,
        rules=TRANSFORMER_RULES,
    ),
    "ControlNetModel",
)

SPARSE_CONTROLNET = register(
    Family(
        build=lambda config, dtype: SparseControlNetModel.from_config(
            config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=sparse_controlnet_example_inputs,
        rules=MOTION_RULES,
    ),
    "SparseControlNetModel",
)

# UNet fields that diffusers' `from_unet` copies into the ControlNet's config.
_FROM_UNET = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor",
    "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
    "attention_head_dim", "num_attention_heads", "resnet_time_scale_shift",
    "attention_implementation", "remat_policy", "dtype", "param_dtype",
)  # fmt: skip
_FROM_UNET_2D_ONLY = (
    "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim",
    "class_embed_type", "num_class_embeds", "projection_class_embeddings_input_dim",
    "mid_block_type",
)  # fmt: skip
# The subtrees a ControlNet shares with its UNet.
_SHARED = ("conv_in", "time_embedding", "class_embedding", "add_embedding", "mid_block")


def controlnet_like(
    unet: UNet2DConditionModel, *, sparse: bool = False, **overrides: Any
) -> ControlNetModel | SparseControlNetModel:
    """The (params-free) ControlNet module that `controlnet_from_unet` builds for `unet`."""
    fields = {k: getattr(unet, k) for k in _FROM_UNET}
    if sparse:
        fields["down_block_types"] = tuple(
            "CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion"
            for t in unet.down_block_types
        )
        fields["conditioning_channels"] = 3
        return SparseControlNetModel(**{**fields, **overrides})
    fields.update({k: getattr(unet, k) for k in _FROM_UNET_2D_ONLY})
    # (from a motion UNet too: its spatial down blocks are the 2D ones)
    fields["down_block_types"] = tuple(t.replace("Motion", "2D") for t in unet.down_block_types)
    return ControlNetModel(**{**fields, **overrides})


def controlnet_from_unet(
    unet: UNet2DConditionModel,
    unet_params: dict,
    rng: jax.Array | None = None,
    *,
    sparse: bool = False,
    **overrides: Any,
) -> tuple[ControlNetModel | SparseControlNetModel, dict]:
    """A new `ControlNetModel` (or with `sparse=True` a `SparseControlNetModel`) shaped like
    `unet`, its time embedding, conv_in, down blocks and mid block copied from `unet_params`
    (diffusers' `from_unet`). The condition embedding is freshly initialised from `rng`, the
    zero convs are zero (so the residuals start at 0), and SparseCtrl's motion modules, which a
    2D UNet does not have, are fresh too.

    `overrides` set ControlNet fields, e.g. `conditioning_channels` (3 by default, as in
    diffusers' `from_unet`; SparseCtrl RGB takes 4 latent channels),
    `use_simplified_condition_embedding`, `motion_num_attention_heads`.
    Returns `(module, params)`; params are plain arrays in the module's `param_dtype`."""
    module = controlnet_like(unet, sparse=sparse, **overrides)
    inputs = sparse_controlnet_example_inputs if sparse else controlnet_example_inputs
    args, kwargs = inputs(module)
    rng = jax.random.key(0) if rng is None else rng
    params = meta.unbox(jax.jit(lambda r: module.init(r, *args, **kwargs))(rng)["params"])

    source = traverse_util.flatten_dict(unet_params)
    flat = traverse_util.flatten_dict(params)
    not_copied = []
    for path, value in flat.items():
        if not (path[0] in _SHARED or path[0].startswith("down_blocks_")):
            continue
        if path not in source:
            not_copied.append("/".join(path))
            continue
        if np.shape(source[path]) != value.shape:
            raise ValueError(
                f"{'/'.join(path)}: UNet has shape {np.shape(source[path])}, ControlNet "
                f"{value.shape}; do `unet` and `unet_params` belong together?"
            )
        flat[path] = jnp.asarray(source[path], value.dtype)
    # Only SparseCtrl's motion modules may be missing from the UNet.
    missing = [p for p in not_copied if not (sparse and "/motion_modules_" in p)]
    if missing:
        raise ValueError(f"unet_params lack {len(missing)} params, e.g. {missing[:5]}")
    return module, traverse_util.unflatten_dict(flat)
