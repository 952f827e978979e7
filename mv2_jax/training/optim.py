"""The optimizer (optax AdamW, warmup + cosine, global-norm clipping) and which params train.

Only the trainable subset of the params goes through the optimizer, so frozen weights have no
Adam moments and no gradients: that is what makes training motion modules alone on a frozen
image UNet cheap.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import optax
from flax import traverse_util


def learning_rate_schedule(config) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to
    `lr · lr_end_factor` at `total_steps` (`lr_schedule="constant"`: flat after warmup)."""
    lr, warmup, total = config.lr, config.warmup_steps, config.total_steps
    if config.lr_schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
            [warmup],
        )
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total, warmup + 1), end_value=lr * config.lr_end_factor
        )
    raise ValueError(f"lr_schedule {config.lr_schedule!r}; choose 'cosine' or 'constant'")


def make_optimizer(config) -> optax.GradientTransformation:
    """Clip by global norm (`grad_clip_norm` ≤ 0: off), then AdamW with the schedule."""
    adamw = optax.adamw(
        learning_rate_schedule(config),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    return adamw


def path_name(path: tuple[str, ...]) -> str:
    return "/".join(path)


def trainable_paths(params: Any, patterns: Sequence[str]) -> list[tuple[str, ...]]:
    """The param paths (tuples of names) matching any glob in `patterns` against their
    `/`-joined name (`"*"` trains everything, `"*motion_modules*"` only the motion modules).
    A pattern that matches nothing is an error: a typo would otherwise freeze the model."""
    paths = list(traverse_util.flatten_dict(params))
    names = [path_name(p) for p in paths]
    unused = [pat for pat in patterns if not fnmatch.filter(names, pat)]
    if unused:
        example = ", ".join(names[:3])
        raise ValueError(
            f"trainable pattern(s) {unused} match no param; names look like: {example}, …"
        )
    chosen = [p for p, n in zip(paths, names) if any(fnmatch.fnmatch(n, pat) for pat in patterns)]
    return chosen


def split_params(params: Any, paths: Sequence[tuple[str, ...]]) -> tuple[dict, dict]:
    """(trainable, frozen): nested dicts holding the params at `paths` and the rest."""
    flat = traverse_util.flatten_dict(params)
    chosen = set(paths)
    trainable = {p: v for p, v in flat.items() if p in chosen}
    frozen = {p: v for p, v in flat.items() if p not in chosen}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Any, frozen: Any) -> dict:
    """The inverse of `split_params`."""
    flat = traverse_util.flatten_dict(frozen)
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)
