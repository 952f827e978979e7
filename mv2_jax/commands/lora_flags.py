"""`--lora PATH[:SCALE]` (repeatable) on every sampling subcommand, `--t2i-lora` / `--i2v-lora` /
`--v2v-lora` on the cascade: LoRA files or folders (every layout `mv2_jax.lora.read_lora`
reads) stacked on a stage's pipeline at their scales (default 1.0), checked before anything
loads."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mv2_jax.commands.finite import finite_float


@dataclass(frozen=True)
class LoraFlag:
    path: str
    scale: float | None = None  # None: not given (1.0, or convert's --lora-scale)

    @property
    def weight(self) -> float:
        return 1.0 if self.scale is None else self.scale

    def __str__(self) -> str:
        return f"{self.path}:{self.weight:g}"


def lora_flag(text: str) -> LoraFlag:
    """`PATH` or `PATH:SCALE` (the text after the last ':' is the scale when it is a number,
    so a path with ':' in it still works); also the type of convert/to_flax.py's `--lora`."""
    path, _, scale = text.rpartition(":")
    if path:
        try:
            float(scale)
        except ValueError:
            return LoraFlag(text)
        return LoraFlag(path, finite_float(scale))
    return LoraFlag(text)


def add_lora_flag(parser: argparse.ArgumentParser, flag: str = "--lora", what: str = "") -> None:
    parser.add_argument(
        flag,
        action="append",
        type=lora_flag,
        default=[],
        metavar="PATH[:SCALE]",
        help=f"a LoRA{what} (file or folder: diffusers / peft, kohya / A1111 incl. LoCon, "
        "AnimateDiff motion LoRAs, LCM-LoRA / AnimateLCM for the lcm scheduler) at SCALE "
        "(default 1); repeat to stack adapters",
    )


def lora_problems(loras: Sequence[LoraFlag], flag: str = "--lora") -> list[str]:
    """Each LoRA path must exist (a file, or a folder holding pytorch_lora_weights*)."""
    return [f"{flag} {lora.path}: no such file or folder" for lora in loras
            if not Path(lora.path).exists()]  # fmt: skip


def apply_loras(pipe, loras: Sequence[LoraFlag], report: Callable[[str], None]) -> None:
    """Load each LoRA onto `pipe` at its scale, named after its file, announced on `report`."""
    for index, lora in enumerate(loras):
        report(f"loading the LoRA {lora.path} (scale {lora.weight:g})")
        pipe.load_lora_weights(lora.path, adapter_name=f"{Path(lora.path).stem}_{index}",
                               scale=lora.weight)  # fmt: skip
