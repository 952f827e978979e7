"""Rematerialisation (gradient checkpointing) by policy name, for the training configs.

`remat_policy` on the UNet picks what the backward pass may keep from the forward pass of each
ResNet and transformer block; everything else is recomputed. Values never change, only the
memory / compute trade-off (tests/models/test_remat.py checks the gradients are equal).
"""

from __future__ import annotations

import flax.linen as nn
import jax

# name → `jax.checkpoint` policy; None under "none" means no remat at all.
REMAT_POLICIES = {
    "none": None,
    # Keep nothing: the least memory, about one extra forward pass of compute.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul / conv outputs, recompute the cheap element-wise work (norms, activations).
    "dots": jax.checkpoint_policies.dots_saveable,
    # As "dots" but only matmuls without batch dims (weights × activations), not attention
    # scores: the usual choice for long sequences.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}; choose one of {sorted(REMAT_POLICIES)}")
    return name


def remat(module_class: type[nn.Module], policy: str) -> type[nn.Module]:
    """`module_class` wrapped in `nn.remat` under the named policy ("none": unchanged)."""
    if REMAT_POLICIES[check_remat_policy(policy)] is None:
        return module_class
    return nn.remat(module_class, policy=REMAT_POLICIES[policy], prevent_cse=True)
