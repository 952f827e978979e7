"""PyTorch state dict → Flax params: a declarative, strict mapping.

Flax modules in this project are named after their PyTorch counterparts (`down_blocks_0` for
`down_blocks.0`), so most keys map mechanically: numeric parts join the name before them, and
`weight` becomes `kernel`, `scale` or `embedding` by what the Flax module holds. Each family adds
a table of `Rule`s for the keys that differ (legacy names, buffers to drop, forced transforms).

Strict: every Flax param must be filled and every tensor used, with shapes checked, else
`WeightMismatchError` lists the missing, unexpected and mis-shaped keys, with the advice of each
family `Hint` whose keys are among them (a config option that the weights and config.json set
differently, say).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import traverse_util


@dataclass(frozen=True)
class Rule:
    """Rewrite keys that fully match `pattern` to `target` (an `re` template giving a canonical
    key), or drop them when `target` is None (buffers such as `position_ids`). Rules apply in
    order, each to the key as the previous ones left it.
    `transform` forces a named transform (see `TRANSFORMS`) instead of the inferred one."""

    pattern: str
    target: str | None
    transform: str | None = None


@dataclass(frozen=True)
class Hint:
    """Advice for a mismatch: `message` is added to the error when a missing, unexpected or
    mis-shaped key (PyTorch `a.b.weight` or Flax `a/b/kernel`) contains a match of `pattern`."""

    pattern: str
    message: str


def _conv_kernel(w):
    # [out, in, *window] → [*window, in, out]; array methods only, so that numpy arrays and
    # traced jax arrays (the LoRA merge, mv2_jax.lora) take the same transforms
    return w.transpose(*range(2, w.ndim), 1, 0)


def _conv_as_linear(w):
    # a 1×1 (or 1×1×1) convolution [out, in, 1, 1] used as a Dense kernel [in, out]
    if any(s != 1 for s in w.shape[2:]):
        raise ValueError(f"conv_as_linear needs a 1×1 window, got {w.shape}")
    return w.reshape(w.shape[:2]).T


TRANSFORMS = {
    "identity": lambda w: w,
    "linear_kernel": lambda w: w.T,
    "conv_kernel": _conv_kernel,
    "conv_as_linear": _conv_as_linear,
    "linear_as_conv": lambda w: w.T.reshape(1, 1, *w.T.shape),
}


class WeightMismatchError(ValueError):
    """A checkpoint that does not fit the model: lists what is missing, unexpected, mis-shaped."""

    def __init__(self, what: str, missing, unexpected, misshaped, hint: str = ""):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), misshaped
        lines = [f"{what}: the checkpoint does not match the model config."]
        for title, items in (
            ("missing (model params with no tensor)", self.missing),
            ("unexpected (tensors with no model param)", self.unexpected),
            ("mis-shaped (key: checkpoint → model)", [f"{k}: {a} → {b}" for k, a, b in misshaped]),
        ):
            if items:
                shown = "\n    ".join(items[:20])
                more = f"\n    … and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"  {len(items)} {title}:\n    {shown}{more}")
        lines.append(
            hint
            or "  Check that config.json belongs to these weights (same folder, same model), and "
            "that the file is complete."
        )
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Target:
    """Where one PyTorch key lands: the Flax param `path` (absent from the model when `shape`
    is None) and the transform a rule forces on the way (`forced`, else inferred from shapes)."""

    path: tuple[str, ...]
    shape: tuple[int, ...] | None
    dtype: Any = None
    forced: str | None = None

    def transform(self, src_shape) -> str:
        """The name in `TRANSFORMS` that turns a tensor of `src_shape` into this param."""
        return self.forced or _infer_transform(self.path[-1], src_shape, self.shape)


class KeyMap:
    """A family's rules over one model's param tree, resolving one PyTorch key at a time:
    `convert_state_dict` maps whole state dicts with it, the LoRA merge (`mv2_jax.lora`) the
    `<module>.weight` of each adapted module."""

    def __init__(self, target_shapes: Mapping, rules: Sequence[Rule] = ()):
        self.flat = traverse_util.flatten_dict(dict(target_shapes))
        self._leaves_of: dict[tuple[str, ...], set[str]] = {}
        for path in self.flat:
            self._leaves_of.setdefault(path[:-1], set()).add(path[-1])
        self._rules = [(re.compile(r.pattern), r) for r in rules]

    def target(self, key: str) -> Target | None:
        """The param `key` fills, or None for a key the rules drop (a buffer)."""
        canonical, forced = key, None
        for regex, rule in self._rules:  # rules apply in order, each to the result of the last
            if canonical is not None and regex.fullmatch(canonical):
                canonical = None if rule.target is None else regex.sub(rule.target, canonical)
                forced = rule.transform or forced
        if canonical is None:
            return None
        path = _flax_path(canonical, self._leaves_of)
        dst = self.flat.get(path)
        if dst is None:
            return Target(path, None, None, forced)
        return Target(path, tuple(dst.shape), dst.dtype, forced)


def _flax_path(canonical: str, leaves_of: Mapping[tuple[str, ...], set[str]]) -> tuple[str, ...]:
    parts: list[str] = []
    for part in canonical.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    *module, leaf = parts
    module_t = tuple(module)
    if leaf == "weight":
        present = leaves_of.get(module_t, set())
        for candidate in ("kernel", "scale", "embedding", "weight"):
            if candidate in present:
                return (*module_t, candidate)
        return (*module_t, "kernel")
    return (*module_t, leaf)


def _infer_transform(leaf: str, src_shape, dst_shape) -> str:
    if leaf != "kernel":
        return "identity"
    src_nd, dst_nd = len(src_shape), len(dst_shape)
    if src_nd == dst_nd:
        return "linear_kernel" if src_nd == 2 else "conv_kernel"
    if src_nd > 2 and dst_nd == 2:
        return "conv_as_linear"
    if src_nd == 2 and dst_nd == 4:
        return "linear_as_conv"
    return "identity"


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    target_shapes: Mapping,
    rules: Sequence[Rule] = (),
    *,
    dtype=None,
    what: str = "checkpoint",
    place: Callable[[tuple[str, ...], np.ndarray], Any] | None = None,
    hints: Sequence[Hint] = (),
) -> dict:
    """Map a PyTorch state dict onto the Flax param tree whose shapes are `target_shapes`
    (a nested dict of arrays or `jax.ShapeDtypeStruct`, e.g. from `jax.eval_shape`).

    Returns nested dicts of numpy arrays in `dtype` (or each param's own dtype), or of whatever
    `place(path, array)` makes of each one as soon as it is converted (e.g. a device array with
    its sharding), so that at most one converted tensor at a time lives in host memory.
    `hints` add their advice to the error (see `Hint`)."""
    keymap = KeyMap(target_shapes, rules)
    out: dict[tuple[str, ...], np.ndarray] = {}
    sources: dict[tuple[str, ...], str] = {}
    unexpected, misshaped = [], []
    for key, tensor in state.items():
        target = keymap.target(key)
        if target is None:
            continue
        path = target.path
        if target.shape is None:
            unexpected.append(key)
            continue
        if path in out:
            raise WeightMismatchError(what, [], [f"{key} (same param as {sources[path]})"], [])
        try:
            value = TRANSFORMS[target.transform(tensor.shape)](np.asarray(tensor))
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != target.shape:
            misshaped.append(("/".join(path) + f" (from {key})", tuple(tensor.shape), target.shape))
            continue
        value = value.astype(dtype or target.dtype)
        out[path] = place(path, value) if place is not None else value
        sources[path] = key
    missing = ["/".join(p) for p in keymap.flat if p not in out and not _is_misshaped(p, misshaped)]
    if missing or unexpected or misshaped:
        keys = [*missing, *unexpected, *(item[0] for item in misshaped)]
        advice = [h.message for h in hints if any(re.search(h.pattern, k) for k in keys)]
        raise WeightMismatchError(what, missing, unexpected, misshaped, hint="\n".join(advice))
    return traverse_util.unflatten_dict(out)


def _is_misshaped(path, misshaped) -> bool:
    prefix = "/".join(path) + " "
    return any(item[0].startswith(prefix) for item in misshaped)
