"""What the stages that tune a pipeline's own model share (Diffusion-DPO, `dpo.py`; consistency
distillation, `lcd.py`): the t2i / i2v / v2v stage of `config.stage` inside them (in a
`LoraStage` for a LoRA run), whose params, shardings and trainable subset are theirs, and an
I2V pipeline's trained appearance encoder as the start of that part of the params.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mv2_jax.training.i2v import ImageToVideoStage
from mv2_jax.training.optim import merge_params
from mv2_jax.training.v2v import VideoToVideoStage
from mv2_jax.weights.load import load_component

log = logging.getLogger(__name__)


def trained_appearance_folder(model, pipeline: Path) -> Path | None:
    """The pipeline's `appearance_encoder/` where `model` is an I2V stage with an appearance
    encoder, which the I2V stage itself starts as a copy of the UNet's spatial weights (the
    V2V stage loads the folder itself)."""
    folder = pipeline / "appearance_encoder"
    wants = isinstance(model, ImageToVideoStage) and not isinstance(model, VideoToVideoStage)
    if wants and model.appearance is not None and (folder / "config.json").is_file():
        return folder
    return None


@dataclass
class TunedModelStage:
    """The base of a stage around config.stage's: `inner` is that stage (or the `LoraStage`
    around it), `model` the t2i / i2v / v2v stage itself, whose UNet call, text encoding and
    conditionings the subclass's loss uses."""

    inner: Any
    model: Any
    appearance_folder: Path | None  # an I2V pipeline's trained appearance encoder

    @staticmethod
    def build_inner(config, pipeline: Path, mesh, workdir=None) -> dict:
        """The fields above for `config` from the `pipeline` folder: a LoRA run's `LoraStage`
        (config.model.lora) or config.stage's stage."""
        from mv2_jax.training.lora import LoraStage, lora_settings
        from mv2_jax.training.trainer import stage_class

        lora = lora_settings(config) is not None
        inner = (LoraStage if lora else stage_class(config.stage)).from_config(
            config, pipeline, mesh, workdir=workdir
        )
        model = inner.inner if lora else inner
        folder = trained_appearance_folder(model, pipeline)
        return {"inner": inner, "model": model, "appearance_folder": folder}

    @property
    def param_dtype(self):
        return self.inner.param_dtype

    @property
    def lora(self):
        """The LoRA stage around the model, or None for full fine-tuning."""
        return None if self.inner is self.model else self.inner

    def param_shapes(self) -> dict:
        return self.inner.param_shapes()

    def param_shardings(self, mesh, rules) -> dict:
        return self.inner.param_shardings(mesh, rules)

    def trainable_patterns(self, patterns) -> tuple[str, ...]:
        return self.inner.trainable_patterns(patterns)

    def load_params(self, shardings) -> dict:
        """The wrapped stage's starting params; an I2V pipeline's trained appearance encoder
        replaces the copy of the UNet's spatial weights the I2V stage starts it from."""
        params = self.inner.load_params(shardings)
        if self.appearance_folder is None:
            return params
        log.info("the appearance encoder starts from %s", self.appearance_folder)
        trained = load_component(
            self.appearance_folder, self.model.param_dtype, shardings["appearance"]
        )[1]
        return merge_params({"appearance": trained}, params)  # LoRA factors there are kept
