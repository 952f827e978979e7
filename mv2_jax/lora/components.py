"""LoRAs on the components of a pipeline: bind each adapter to the component models it
touches (their families' rules, `mv2_jax.weights.registry`) and fuse them, strictly: a LoRA for
a component the caller did not give stops with an error instead of being left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from mv2_jax.lora.adapter import LoraAdapter
from mv2_jax.lora.merge import merge_lora
from mv2_jax.lora.resolve import BoundLora, resolve_lora
from mv2_jax.weights.registry import family_of


def bind_lora(
    adapter: LoraAdapter, component: str, module: nn.Module, params: Mapping
) -> BoundLora:
    """The `component` part of `adapter` resolved against a model built by `load_component`
    (`module`, its `params`: arrays or `jax.ShapeDtypeStruct`s)."""
    return resolve_lora(adapter, component, params, family_of(module).rules)


def bind_components(
    adapter: LoraAdapter, models: Mapping[str, tuple[nn.Module, Mapping]]
) -> dict[str, BoundLora]:
    """`{component: BoundLora}` for every component `adapter` touches, each of which must be in
    `models` (`{"unet": (module, params), "text_encoder": …}`)."""
    touched = [c for c in adapter.components if adapter.modules(c)]
    absent = [c for c in touched if c not in models]
    if absent:
        raise ValueError(
            f"{adapter.source}: holds LoRA weights for {absent}, which this model has not "
            f"(it has {sorted(models)})"
        )
    return {c: bind_lora(adapter, c, *models[c]) for c in touched}


def merge_components(
    models: Mapping[str, tuple[nn.Module, Mapping]],
    adapters: Sequence[tuple[LoraAdapter, float]],
) -> dict[str, Any]:
    """`{component: params}` with the adapters (each with its scale) fused in; components no
    adapter touches keep their params as given."""
    scaled: dict[str, list[tuple[BoundLora, float]]] = {}
    for adapter, scale in adapters:
        for component, bound in bind_components(adapter, models).items():
            scaled.setdefault(component, []).append((bound, scale))
    return {
        component: merge_lora(params, scaled[component]) if component in scaled else params
        for component, (_, params) in models.items()
    }
