"""Model families `load_component` knows: how to build each from its config, how to trace its
param shapes, and the rules that map its PyTorch keys.

A family registers under the class names that diffusers (`_class_name`) and transformers
(`architectures`) write into `config.json`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax

from mv2_jax.weights.mapping import Hint, Rule


@dataclass(frozen=True)
class Family:
    """`build(config, dtype)` → module; `example_inputs(module)` → (args, kwargs) for `init`;
    `rules` and `hints` for `convert_state_dict`; `weights_stem` names the safetensors file(s)."""

    build: Callable[[Mapping[str, Any], Any], nn.Module]
    example_inputs: Callable[[nn.Module], tuple[tuple, dict]]
    rules: tuple[Rule, ...] = ()
    hints: tuple[Hint, ...] = ()
    weights_stem: str = "diffusion_pytorch_model"


FAMILIES: dict[str, Family] = {}


def register(family: Family, *class_names: str) -> Family:
    for name in class_names:
        FAMILIES[name] = family
    return family


def family_for(config: Mapping[str, Any], where: str = "config.json") -> tuple[str, Family]:
    """The registered family named by a diffusers or transformers config."""
    _ensure_registered()
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if name is None:
        raise ValueError(
            f"{where}: has neither `_class_name` (diffusers) nor `architectures` "
            "(transformers); is this a component folder?"
        )
    if name not in FAMILIES:
        raise NotImplementedError(
            f"{where}: model class {name!r} is not supported; supported: {sorted(FAMILIES)}"
        )
    return name, FAMILIES[name]


def family_of(module: nn.Module) -> Family:
    """The family of a component model built by `load_component` (by its class name)."""
    _ensure_registered()
    return FAMILIES[type(module).__name__]


def param_shapes(module: nn.Module, family: Family) -> dict:
    """The param tree of `module` as `jax.ShapeDtypeStruct`s (nothing is computed; kept on
    disk between runs where a shape cache is set, `mv2_jax.weights.shape_cache`)."""
    from mv2_jax.weights.shape_cache import cached_shapes

    def trace() -> dict:
        args, kwargs = family.example_inputs(module)
        variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
        return nn.meta.unbox(variables["params"])

    return cached_shapes(module, trace)


# Modules under mv2_jax.weights whose import registers their families.
_FAMILY_MODULES = ("unet", "clip", "vae", "motion", "controlnet", "vfi")


def _ensure_registered() -> None:
    for name in _FAMILY_MODULES:
        importlib.import_module(f"mv2_jax.weights.{name}")
