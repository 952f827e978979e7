"""The canonical in-memory LoRA: what every file format (`mv2_jax.lora.formats`) reads into.

A LoRA changes the weight `W [out, in, *window]` of a PyTorch module by
`ΔW = scale · (alpha / rank) · up @ down` (Hu et al. 2021, eq. 3, with kohya's / peft's
`alpha`), `down [rank, in, *window]` (peft's `lora_A`, kohya's `lora_down`) and
`up [out, rank, *1]` (`lora_B`, `lora_up`); convolution LoRAs (LoCon) keep their 4-D shapes and
contract over the rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# The components a LoRA file may target, by diffusers' pipeline attribute names.
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def checked_scale(value, what: str) -> float:
    """`value` as a float, refused (ValueError naming `what`) unless it is a finite number: a
    NaN or infinite scale would fuse NaNs into every param it touches."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{what}: the LoRA scale must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what}: the LoRA scale must be a finite number, got {value}")
    return float(value)


@dataclass(frozen=True)
class LoraWeights:
    """One module's low-rank update; `alpha` None means alpha = rank (diffusers' reading)."""

    down: np.ndarray
    up: np.ndarray
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def multiplier(self) -> float:
        """alpha / rank: what `up @ down` is multiplied by at scale 1."""
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The PyTorch shape of the weight it updates, `[out, in, *window]`."""
        return (int(self.up.shape[0]), *(int(s) for s in self.down.shape[1:]))


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA file read: per component (`COMPONENTS`), per PyTorch module name
    (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), its `LoraWeights`.

    `naming` is "torch" for dotted PyTorch module names, or "kohya" for kohya / A1111 names
    (`down_blocks_0_attentions_0_…`, dots written as underscores, SD1.x diffusers or SDXL
    LDM block names), which only the model itself can resolve (`mv2_jax.lora.resolve`)."""

    components: Mapping[str, Mapping[str, LoraWeights]]
    format: str
    naming: str = "torch"
    source: str = "LoRA"
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.components) - set(COMPONENTS))
        if unknown:
            raise ValueError(
                f"{self.source}: unknown LoRA components {unknown}; known {COMPONENTS}"
            )

    def modules(self, component: str) -> Mapping[str, LoraWeights]:
        """The modules of one component (empty where the LoRA does not touch it)."""
        return self.components.get(component, {})

    @property
    def num_params(self) -> int:
        return sum(
            w.down.size + w.up.size for mods in self.components.values() for w in mods.values()
        )
