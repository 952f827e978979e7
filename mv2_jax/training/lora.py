"""LoRA training (`config.model.lora`, rank > 0) of the t2i, i2v and v2v stages: a stage around
the configured one whose params are that stage's — frozen, stored in `lora.base_dtype` — plus
fp32 LoRA factors beside each targeted kernel (`mv2_jax.lora.leaves`). Only the factors train,
so only they get gradients, Adam moments and an EMA (the trainer's trainable subset); the loss
is the wrapped stage's with `(alpha/rank) · (x down) up` added beside each adapted Dense layer
(`mv2_jax.models.layers.Dense`) and `W + (alpha/rank) · down @ up` fused into each adapted
convolution, so every model trains a LoRA unchanged. `python -m mv2_jax.training.export
--lora-only` writes the factors as a diffusers LoRA file (`mv2_jax.training.lora_export`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mv2_jax.lora.leaves import (
    DOWN,
    UP,
    init_lora_leaves,
    lora_leaf_shapes,
    lora_leaf_shardings,
    lora_targets,
    side_path_leaves,
)
from mv2_jax.training.optim import merge_params, split_params
from mv2_jax.training.stage import dtype_of

log = logging.getLogger(__name__)

LORA_STAGES = ("t2i", "i2v", "v2v", "reward_gradient")
TRAINABLE = (f"*/{DOWN}", f"*/{UP}")  # the trainer's trainable subset: the factors alone
_INIT_STREAM = 0x10AA  # folded into the run's seed for the factors' init


@dataclass(frozen=True)
class LoraSettings:
    """`config.model.lora`: rank, alpha (0: alpha = rank), target globs, the base's dtype."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    base_dtype: str

    @property
    def multiplier(self) -> float:
        """alpha / rank: what `down @ up` is multiplied by."""
        return (self.alpha or self.rank) / self.rank


def lora_settings(config) -> LoraSettings | None:
    """The run's LoRA settings; None where `config.model.lora` is absent or its rank is 0."""
    lora = config.model.get("lora")
    if not lora or not lora.get("rank"):
        return None
    if config.stage not in LORA_STAGES:
        raise ValueError(
            f"config.model.lora.rank={lora.rank}: LoRA training is for the {LORA_STAGES} stages, "
            f"not {config.stage!r}"
        )
    if lora.rank < 0 or lora.get("alpha", 0) < 0:
        raise ValueError(f"config.model.lora: rank {lora.rank} and alpha must be ≥ 0")
    targets = tuple(lora.get("targets") or ())
    if not targets:
        raise ValueError(
            "config.model.lora.targets is empty: give module-path globs, e.g. '*/attn1/to_q'"
        )
    return LoraSettings(
        int(lora.rank), float(lora.get("alpha", 0)), targets, lora.get("base_dtype", "")
    )


def lora_paths(targets) -> list[tuple[str, ...]]:
    """The param paths of the factors of `targets` (module paths)."""
    return [(*module, leaf) for module in targets for leaf in (DOWN, UP)]


@dataclass
class LoraStage:
    """The `TrainingStage` of a LoRA run: `inner` (config.stage's own stage, built with
    `param_dtype` = the base's dtype) with the factors of `targets` (`{module path: kernel
    shape}`) added to its params."""

    needs_pipeline: ClassVar[bool] = True
    uses_config_data: ClassVar[bool] = True

    inner: Any
    settings: LoraSettings
    targets: dict
    seed: int
    param_dtype: Any = jnp.float32  # the factors'; the base keeps the inner stage's

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None) -> LoraStage:
        from mv2_jax.training.trainer import stage_class

        settings = lora_settings(config)
        if settings is None:
            raise ValueError("config.model.lora.rank is 0: not a LoRA run")
        base = config.copy_and_resolve_references()
        base.param_dtype = settings.base_dtype or config.param_dtype
        dtype_of(base.param_dtype)  # a bad name fails here, not deep in a load
        inner = stage_class(config.stage).from_config(base, pipeline, mesh, workdir=workdir)
        targets = lora_targets(inner.param_shapes(), settings.targets)
        log.info(
            "LoRA rank %d, alpha %g on %d kernels; the base (%s) is frozen",
            settings.rank,
            settings.alpha or settings.rank,
            len(targets),
            base.param_dtype,
        )
        return cls(inner=inner, settings=settings, targets=targets, seed=config.seed)

    @property
    def consts(self) -> dict:
        return self.inner.consts

    def param_shapes(self) -> dict:
        factors = lora_leaf_shapes(self.targets, self.settings.rank, self.param_dtype)
        return merge_params(factors, self.inner.param_shapes())

    def param_shardings(self, mesh, rules) -> dict:
        base = self.inner.param_shardings(mesh, rules)
        return merge_params(lora_leaf_shardings(self.targets, base), base)

    def load_params(self, shardings) -> dict:
        """The inner stage's params, and fresh factors (up = 0: step 0 is the base model)."""
        factor_shardings, base_shardings = split_params(shardings, lora_paths(self.targets))
        base = self.inner.load_params(base_shardings)
        key = jax.random.fold_in(jax.random.key(self.seed), _INIT_STREAM)
        init = jax.jit(
            lambda k: init_lora_leaves(self.targets, self.settings.rank, k),
            out_shardings=factor_shardings,
        )
        return merge_params(init(key), base)

    def trainable_patterns(self, patterns) -> tuple[str, ...]:
        """The factors alone, whatever `config.trainable` says (logged when it says more)."""
        if tuple(patterns) != ("*",):
            log.info("LoRA run: config.trainable=%s is replaced by %s", tuple(patterns), TRAINABLE)
        return TRAINABLE

    def make_data_iterator(self, config) -> Iterator[dict]:
        return self.inner.make_data_iterator(config)

    def prepare(self, batch: dict) -> dict:
        return self.inner.prepare(batch)

    def adapted(self, params) -> dict:
        """The inner stage's params with the LoRA as its model reads it in training: beside
        each adapted Dense layer (only the factors' gradients cross devices) and fused into
        each adapted convolution (fp32); `fuse_lora_leaves` fuses all (what an export writes)."""
        return side_path_leaves(params, self.settings.multiplier)

    def adapter_off(self, params) -> dict:
        """The inner stage's params without the LoRA: the frozen base, as it started (the
        reference of Diffusion-DPO, the teacher of consistency distillation; no copy)."""
        return split_params(params, lora_paths(self.targets))[1]

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """The inner stage's loss on the adapted params."""
        return self.inner.loss(self.adapted(params), consts, batch, keys)
