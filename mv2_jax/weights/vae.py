"""PyTorch → Flax mapping for diffusers' `AutoencoderKL` (the SD / SDXL VAE).

Keys map mechanically; the rules only rename the mid-block attention of checkpoints saved by
older diffusers (its former `AttentionBlock`), as diffusers itself does on load.
"""

from __future__ import annotations

import jax.numpy as jnp

from mv2_jax.models.vae import AutoencoderKL
from mv2_jax.weights.mapping import Rule
from mv2_jax.weights.registry import Family, register

# Legacy `AttentionBlock` names → `Attention` names (diffusers' `_convert_deprecated_attention
# _blocks`). Weights stored as 1×1 convolutions `[C, C, 1, 1]` (some LDM conversions) need no
# rule: the mapping infers `conv_as_linear` for a 4-D tensor going to a Dense kernel.
VAE_RULES = (
    Rule(r"(.*\.attentions\.\d+)\.query\.(weight|bias)", r"\1.to_q.\2"),
    Rule(r"(.*\.attentions\.\d+)\.key\.(weight|bias)", r"\1.to_k.\2"),
    Rule(r"(.*\.attentions\.\d+)\.value\.(weight|bias)", r"\1.to_v.\2"),
    Rule(r"(.*\.attentions\.\d+)\.proj_attn\.(weight|bias)", r"\1.to_out.0.\2"),
)


def vae_example_inputs(vae: AutoencoderKL) -> tuple[tuple, dict]:
    """An image just large enough for every downsampling; `__call__` creates every param."""
    size = 2 ** len(vae.block_out_channels)
    return (jnp.zeros((1, size, size, vae.in_channels)),), {}


VAE = register(
    Family(
        build=lambda config, dtype: AutoencoderKL.from_config(
            config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=vae_example_inputs,
        rules=VAE_RULES,
    ),
    "AutoencoderKL",
)
