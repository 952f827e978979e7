"""LoRA adapters on a pipeline, with diffusers' method names (`LoraMixin`).

    pipe.load_lora_weights("style.safetensors", adapter_name="style", scale=0.8)
    pipe.load_lora_weights("zoom_in.ckpt", adapter_name="zoom")      # stacks on "style"
    pipe.set_adapters(["style", "zoom"], [0.5, 1.0])
    pipe.fuse_lora(lora_scale=0.9) / pipe.unfuse_lora()
    pipe.unload_lora_weights()                                       # the base params, bit-exact

The params are arguments of the compiled programs, not constants, so every adapter is applied
by fusing it into the params (`mv2_jax.lora.merge_lora`, per param, on the params' own devices)
whenever the adapters or their weights change: an unfused adapter costs nothing per step either,
and no change recompiles a sampler. The params are always fused from the kept base params, so
the order of changes never accumulates rounding, and unloading gives the base arrays back.
`fuse_lora` bakes the active adapters' weights (× `lora_scale`) in, as diffusers does: later
`set_adapters` calls leave them out until `unfuse_lora`. Not to be called while another thread
samples with the same pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mv2_jax.lora import BoundLora, LoraAdapter, bind_components, merge_lora, read_lora
from mv2_jax.lora.adapter import checked_scale


@dataclass
class LoraState:
    """A pipeline's adapters: the base params of each component an adapter touched, each
    adapter bound to its components, the active weights, and the fused ones."""

    base: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, dict[str, BoundLora]] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)
    fused: dict[str, float] = field(default_factory=dict)  # adapter → weight × lora_scale
    unfused: dict[str, float] = field(default_factory=dict)  # its weight before fuse_lora


class LoraMixin:
    """LoRA methods for a pipeline whose `lora_components()` names its LoRA-capable models and
    `_set_component_params(name, params)` swaps one's params (`LatentDiffusionPipeline`)."""

    _lora: LoraState

    def lora_components(self) -> dict[str, tuple[Any, Any]]:
        raise NotImplementedError

    def _set_component_params(self, name: str, params: Any) -> None:
        raise NotImplementedError

    def load_lora_weights(
        self,
        lora: str | os.PathLike | LoraAdapter,
        adapter_name: str | None = None,
        scale: float = 1.0,
    ) -> str:
        """Read a LoRA file or folder (every layout `mv2_jax.lora.read_lora` knows) and apply
        it at `scale` on top of the adapters loaded before. Returns the adapter's name
        (default `default_N`, as diffusers names them). A LoRA that does not fit this
        pipeline's models raises before anything changes."""
        state = self._lora
        name = adapter_name or f"default_{len(state.adapters)}"
        if name in state.adapters:
            raise ValueError(
                f"an adapter named {name!r} is loaded already; pass another adapter_name, or "
                "unload_lora_weights() first"
            )
        adapter = lora if isinstance(lora, LoraAdapter) else read_lora(lora)
        base = {
            c: (module, state.base.get(c, params))
            for c, (module, params) in self.lora_components().items()
        }
        bound = bind_components(adapter, base)
        for component in bound:
            state.base.setdefault(component, base[component][1])
        state.adapters[name] = bound
        state.active[name] = checked_scale(scale, name)
        self._fuse_adapters()
        return name

    def set_adapters(
        self,
        adapter_names: str | Sequence[str],
        adapter_weights: float | Sequence[float] | None = None,
    ) -> None:
        """Make `adapter_names` the active adapters, with `adapter_weights` (one for all, one
        each, or None: 1.0); loaded adapters not named are switched off (fused ones stay)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None or isinstance(adapter_weights, int | float):
            weights = [1.0 if adapter_weights is None else adapter_weights] * len(names)
        else:
            weights = list(adapter_weights)
        if len(weights) != len(names):
            raise ValueError(f"{len(names)} adapter names but {len(weights)} weights")
        unknown = [n for n in names if n not in self._lora.adapters]
        if unknown:
            raise ValueError(f"no adapter named {unknown}; loaded: {self.get_list_adapters()}")
        fused = [n for n in names if n in self._lora.fused]
        if fused:
            raise ValueError(f"adapters {fused} are fused; unfuse_lora() before reweighting them")
        self._lora.active = {n: checked_scale(w, n) for n, w in zip(names, weights, strict=True)}
        self._fuse_adapters()

    def disable_lora(self) -> None:
        """Switch every unfused adapter off (they stay loaded; `set_adapters` brings them
        back)."""
        self.set_adapters([])

    def get_list_adapters(self) -> list[str]:
        return list(self._lora.adapters)

    def get_active_adapters(self) -> list[str]:
        return [*self._lora.fused, *self._lora.active]

    def fuse_lora(self, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None):
        """Bake the active adapters (or `adapter_names` of them) into the params at their
        weights × `lora_scale`; `unfuse_lora` takes them out again."""
        state = self._lora
        names = list(state.active if adapter_names is None else adapter_names)
        inactive = [n for n in names if n not in state.active]
        if inactive:
            raise ValueError(f"adapters {inactive} are not active (active: {list(state.active)})")
        for name in names:
            state.unfused[name] = weight = state.active.pop(name)
            state.fused[name] = weight * checked_scale(lora_scale, "lora_scale")
        self._fuse_adapters()

    def unfuse_lora(self) -> None:
        """Take the fused adapters out of the params; they become active again at the weights
        they had before `fuse_lora`."""
        state = self._lora
        for name in list(state.fused):
            del state.fused[name]
            state.active[name] = state.unfused.pop(name)
        self._fuse_adapters()

    def unload_lora_weights(self) -> None:
        """Forget every adapter; each component gets its base params back (the same arrays)."""
        base = self._lora.base
        self._lora = LoraState()
        for component, params in base.items():
            self._set_component_params(component, params)

    def _fuse_adapters(self) -> None:
        """Each touched component's params: its base with the fused and active adapters."""
        state = self._lora
        applied = {**state.fused, **state.active}
        for component, base in state.base.items():
            updates = [
                (bound[component], weight)
                for name, weight in applied.items()
                if component in (bound := state.adapters[name])
            ]
            self._set_component_params(component, merge_lora(base, updates) if updates else base)
