"""A `LoraAdapter`'s modules → the Flax params they update, through the family's own
PyTorch→Flax rules (`mv2_jax.weights.mapping.KeyMap`): module `X` updates the param that
`X.weight` converts to, with the transform that weight takes (linear → transposed, conv →
`[kh, kw, in, out]`, 1×1 conv as Dense, Dense as 1×1 conv).

kohya names (`down_blocks_0_attentions_0_…_to_q`, dots written as underscores) are matched to
the model's modules by their flat name (the Flax path joined by underscores, which the
mechanical naming makes equal to the PyTorch name's), SDXL's LDM block names first renamed
(`mv2_jax.lora.kohya_ldm`); the match then goes through the same rules. Strict: a module of no
param, or of another shape, stops with `WeightMismatchError` listing them all.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import numpy as np

from mv2_jax.lora.adapter import LoraAdapter, LoraWeights
from mv2_jax.lora.kohya_ldm import ldm_renamer
from mv2_jax.weights.mapping import TRANSFORMS, KeyMap, Rule, Target, WeightMismatchError


@dataclass(frozen=True)
class LoraUpdate:
    """One adapter's update of one Flax param: `TRANSFORMS[transform](up @ down)` times
    `multiplier` (alpha / rank) times the adapter's scale; `module` names it in the file."""

    down: np.ndarray
    up: np.ndarray
    multiplier: float
    transform: str
    module: str


@dataclass(frozen=True)
class BoundLora:
    """An adapter resolved against one component's params: `{flax path: LoraUpdate}`."""

    component: str
    updates: Mapping[tuple[str, ...], LoraUpdate]
    source: str = "LoRA"


def resolve_lora(
    adapter: LoraAdapter,
    component: str,
    param_shapes: Mapping,
    rules: tuple[Rule, ...] = (),
) -> BoundLora:
    """Bind the `component` part of `adapter` to a param tree (arrays or
    `jax.ShapeDtypeStruct`s) of the family whose conversion `rules` are given."""
    keymap = KeyMap(param_shapes, rules)
    names = _KohyaNames(keymap) if adapter.naming == "kohya" else None
    updates: dict[tuple[str, ...], LoraUpdate] = {}
    unexpected, misshaped = [], []
    for module, weights in adapter.modules(component).items():
        torch_name = module if names is None else names.torch_name(module)
        target = keymap.target(f"{torch_name}.weight") if torch_name else None
        if target is None or target.shape is None:
            unexpected.append(f"{component}.{module}")
            continue
        transform, shape = _update_shape(weights, target)
        if shape != target.shape:
            where = "/".join(target.path) + f" (from {component}.{module})"
            misshaped.append((where, _factor_shapes(weights), target.shape))
            continue
        if target.path in updates:
            unexpected.append(f"{component}.{module} (same param as {updates[target.path].module})")
            continue
        updates[target.path] = LoraUpdate(
            weights.down, weights.up, weights.multiplier, transform, module
        )
    if unexpected or misshaped:
        raise WeightMismatchError(
            f"{adapter.source} ({component})",
            [],
            unexpected,
            misshaped,
            hint="  Is this LoRA for another model (SD1.x / SDXL / AnimateDiff, other widths)?",
        )
    return BoundLora(component, updates, adapter.source)


def _update_shape(weights: LoraWeights, target: Target) -> tuple[str, tuple[int, ...] | None]:
    """(transform, the Flax shape of the update), None where the factors do not multiply."""
    down, up = weights.down, weights.up
    rank = down.shape[0]
    chained = (
        up.ndim in (2, down.ndim) and up.shape[1] == rank and all(s == 1 for s in up.shape[2:])
    )
    if not chained or down.ndim < 2:
        return "identity", None
    transform = target.transform(weights.weight_shape)
    spec = jax.ShapeDtypeStruct(weights.weight_shape, np.float32)
    try:
        return transform, tuple(jax.eval_shape(TRANSFORMS[transform], spec).shape)
    except ValueError:
        return transform, None


def _factor_shapes(weights: LoraWeights) -> str:
    return f"up {tuple(weights.up.shape)} @ down {tuple(weights.down.shape)}"


class _KohyaNames:
    """kohya flat names → the model's PyTorch module names."""

    def __init__(self, keymap: KeyMap):
        self.keymap = keymap
        self.modules: dict[str, tuple[str, ...] | None] = {}  # None where two share a name
        for path in keymap.flat:
            module, flat = path[:-1], "_".join(path[:-1])
            self.modules[flat] = module if self.modules.get(flat, module) == module else None
        self.from_ldm = ldm_renamer(keymap.flat)

    def torch_name(self, flat: str) -> str | None:
        """The PyTorch name of the module a kohya name means: of the spellings of its Flax
        path (an underscore next to a number may have been a dot: `down_blocks_0` ←
        `down_blocks.0`, `net_0_proj` ← `net.0.proj`), the first that the family's rules map
        back to it."""
        module = None
        for name in (flat, *_text_model_spellings(flat)):
            module = self.modules.get(name) or self.modules.get(self.from_ldm(name) or "")
            if module is not None:
                break
        return None if module is None else module_torch_name(self.keymap, module)


def _text_model_spellings(flat: str) -> tuple[str, ...]:
    """A text encoder's kohya name with and without CLIP's `text_model_` wrapper: trainers on
    transformers ≥ 5 (whose CLIPTextModel dropped it) write names without it."""
    prefix = "text_model_"
    return (flat[len(prefix) :],) if flat.startswith(prefix) else (prefix + flat,)


def module_torch_name(keymap: KeyMap, module: tuple[str, ...]) -> str | None:
    """The PyTorch name of the Flax module at path `module`: of the spellings of its parts (an
    underscore next to a number may have been a dot), the first whose `.weight` the family's
    rules map back to it; None if none does."""
    for spelling in itertools.product(*(_spellings(part) for part in module)):
        name = ".".join(spelling)
        target = keymap.target(f"{name}.weight")
        if target is not None and target.path[:-1] == module:
            return name
    return None


def _spellings(part: str) -> list[str]:
    """`net_0_proj` → [`net.0.proj`, `net.0_proj`, `net_0.proj`, `net_0_proj`]."""
    tokens = part.split("_")
    choices = [
        (".", "_") if tokens[i].isdigit() or tokens[i + 1].isdigit() else ("_",)
        for i in range(len(tokens) - 1)
    ]
    return [
        tokens[0] + "".join(sep + token for sep, token in zip(seps, tokens[1:]))
        for seps in itertools.product(*choices)
    ]
