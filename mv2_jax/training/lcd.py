"""Latent consistency distillation of this project's own stages (issue 22): a LoRA student of
the T2I UNet, the I2V motion UNet or the V2V UNet that samples in a few unguided steps with the
LCM scheduler (`--scheduler lcm`, guidance 1). The objective is `mv2_jax.training.consistency`
(LCM, Luo et al. 2023, with the guidance folded into the teacher's target, as LCM-LoRA):

- the teacher is the base model — the same params with the adapter off (no second copy);
- the student is the base with the LoRA on, run on the prompt's half of the batch alone;
- the target network is the base with the EMA of the LoRA factors: the trainer's EMA
  (`config.ema_decay`, part of the train state, so resume is exact) reaches the loss through
  `stage_contract.ReadsEma`; `ema_decay` = 0 makes it the student itself (LCM-LoRA's setting).

The run's stage when the config has an `lcd` section (configs/lcd.py): it wraps the stage of
`config.stage` ("t2i", "i2v", "v2v") and reuses its data, text encoding, VAE and conditionings —
the key image's appearance features and ControlNet (I2V, V2V), the noise-augmented low-res
latents and their level (V2V) — which the teacher, the student and the target see alike. The
teacher's negative branch is what that stage's sampler uses: the empty prompt (zeros for an
SDXL pipeline with `force_zeros_for_empty_prompt`), with the I2V's reference features encoded
from the prompt on both halves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp

from mv2_jax.pipelines.loading import read_model_index
from mv2_jax.training import losses
from mv2_jax.training.consistency import (
    LOSS_TYPES,
    ConsistencySettings,
    consistency_distillation_loss,
    consistency_tables,
    guided_output,
    sample_points,
)
from mv2_jax.training.i2v import ImageToVideoStage
from mv2_jax.training.optim import merge_params
from mv2_jax.training.stage import key_streams
from mv2_jax.training.step import EMA_CONST
from mv2_jax.training.tuning import TunedModelStage
from mv2_jax.training.v2v import VideoToVideoStage

LCD_STAGES = ("t2i", "i2v", "v2v")  # the stages whose UNet distils into a LoRA student
# predict(params, x [N, ...], timesteps [N], context [N, L, D], pooled [N, P] | None) → output,
# N a multiple of the batch: its conditionings repeated to match
Predictor = Callable[..., jax.Array]


def lcd_settings(config) -> ConsistencySettings:
    """`config.lcd`, checked against the run it belongs to."""
    from mv2_jax.training.lora import lora_settings

    c = config.lcd
    if config.stage not in LCD_STAGES:
        raise ValueError(
            f"config.stage={config.stage!r} with an lcd section: consistency distillation "
            f"distils the {LCD_STAGES} stages' UNets"
        )
    if lora_settings(config) is None:
        raise ValueError(
            "an lcd run trains a LoRA student (the teacher is the base with the adapter off): "
            "set config.model.lora.rank > 0 and its targets"
        )
    if not c.num_ddim_timesteps >= 1:
        raise ValueError(f"lcd.num_ddim_timesteps={c.num_ddim_timesteps}: must be ≥ 1 (e.g. 50)")
    if not 1 <= c.skip_steps < c.num_ddim_timesteps:
        raise ValueError(
            f"lcd.skip_steps={c.skip_steps}: k must be in 1 … num_ddim_timesteps − 1 "
            f"({c.num_ddim_timesteps - 1}); LCM uses 1 of 50 (20 of 1000 train steps)"
        )
    if not 0 <= c.guidance_scale_min <= c.guidance_scale_max:
        raise ValueError(
            f"lcd.guidance_scale_min={c.guidance_scale_min}, guidance_scale_max="
            f"{c.guidance_scale_max}: need 0 ≤ min ≤ max (1 and 1: no guidance)"
        )
    if c.loss_type not in LOSS_TYPES:
        raise ValueError(f"lcd.loss_type={c.loss_type!r}; choose one of {LOSS_TYPES}")
    if c.loss_type == "huber" and not c.huber_c > 0:
        raise ValueError(f"lcd.huber_c={c.huber_c}: the pseudo-Huber c must be > 0 (e.g. 0.001)")
    if not c.timestep_scaling > 0:
        raise ValueError(
            f"lcd.timestep_scaling={c.timestep_scaling}: must be > 0 (10, the LCM scheduler's "
            "timestep_scaling, which the student samples with)"
        )
    if not 0 <= config.ema_decay < 1:
        raise ValueError(
            f"ema_decay={config.ema_decay}: the target network's EMA decay must be in [0, 1) "
            "(0: the target is the student itself)"
        )
    if config.diffusion.min_snr_gamma > 0:
        raise ValueError(
            f"diffusion.min_snr_gamma={config.diffusion.min_snr_gamma}: consistency distillation "
            "weighs every grid point alike; set it to 0"
        )
    return ConsistencySettings(
        num_ddim_timesteps=int(c.num_ddim_timesteps),
        skip_steps=int(c.skip_steps),
        guidance_scale_min=float(c.guidance_scale_min),
        guidance_scale_max=float(c.guidance_scale_max),
        loss_type=str(c.loss_type),
        huber_c=float(c.huber_c),
        timestep_scaling=float(c.timestep_scaling),
    )


def _repeat(x: jax.Array | None, n: int) -> jax.Array | None:
    return x if x is None or n == 1 else jnp.concatenate([x] * n)


@dataclass
class ConsistencyDistillationStage(TunedModelStage):
    """The `TrainingStage` of an lcd run: `inner` the `LoraStage` around config.stage's stage
    `model` (`mv2_jax.training.tuning`)."""

    needs_pipeline: ClassVar[bool] = True
    uses_config_data: ClassVar[bool] = True  # the wrapped stage's data
    reads_ema: ClassVar[bool] = True  # the target network's LoRA factors

    settings: ConsistencySettings
    consts: dict  # the model's, and "lcd": `consistency_tables`
    zero_negative: bool  # SDXL with force_zeros_for_empty_prompt: the negative is zeros

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None):
        settings = lcd_settings(config)
        fields = cls.build_inner(config, pipeline, mesh, workdir)
        model = fields["model"]
        alphas_cumprod = model.consts["alphas_cumprod"]
        if settings.num_ddim_timesteps > alphas_cumprod.shape[0]:
            raise ValueError(
                f"lcd.num_ddim_timesteps={settings.num_ddim_timesteps} exceeds the teacher's "
                f"{alphas_cumprod.shape[0]} train timesteps"
            )
        tables = consistency_tables(jax.device_get(alphas_cumprod), settings)
        index = read_model_index(pipeline)
        zero_negative = model.sdxl and bool(index.get("force_zeros_for_empty_prompt", True))
        consts = {**model.consts, "lcd": {k: jnp.asarray(v) for k, v in tables.items()}}
        return cls(**fields, settings=settings, consts=consts, zero_negative=zero_negative)

    # ---- data: the wrapped stage's

    def make_data_iterator(self, config) -> Iterator[dict]:
        return self.inner.make_data_iterator(config)

    def prepare(self, batch: dict) -> dict:
        return self.inner.prepare(batch)

    # ---- device side

    def conditioned(self, consts, batch, keys, context) -> tuple[jax.Array, Predictor]:
        """(the clean latents `[B, ...]`, `predict`): the wrapped stage's UNet call with its
        conditionings of this batch (key image, low-res video), repeated over the guidance
        halves; the I2V's reference features read the prompt's `context` `[B, L, D]` on every
        half, as its pipeline encodes them."""
        model = self.model
        k_vae, k_low, k_level, k_augment = keys
        latents = model.clean_latents(consts, batch, k_vae)
        if not isinstance(model, ImageToVideoStage):
            if latents.ndim == 5:  # precomputed images `[B,1,h,w,c]`
                latents = latents[:, 0]

            def predict(params, x, t, text, pooled):
                n = x.shape[0] // latents.shape[0]
                return model.predictor(params, _repeat(latents, n), text, pooled)(x, t)

            return latents, predict
        extra = {}
        if isinstance(model, VideoToVideoStage):
            condition, levels = model.low_res_condition(
                consts["vae"], batch["pixels"], latents.shape[2:4], k_low, k_level, k_augment
            )
            extra = {"condition": condition, "class_labels": levels}

        def predict(params, x, t, text, pooled):
            del pooled  # SD1.x/2.x UNets
            n = x.shape[0] // latents.shape[0]
            repeated = {k: _repeat(v, n) for k, v in extra.items()}
            reference = _repeat(context, n)
            call = model.predictor(
                params, _repeat(latents, n), text, reference_context=reference, **repeated
            )
            return call(x, t)

        return latents, predict

    def negative(self, consts, context, pooled) -> tuple[jax.Array, jax.Array | None]:
        """The teacher's unconditional text: the empty prompt's embeddings (or zeros)."""
        if self.zero_negative:
            return jnp.zeros_like(context), None if pooled is None else jnp.zeros_like(pooled)
        empty = jnp.broadcast_to(consts["empty_context"], context.shape)
        if pooled is not None:
            pooled = jnp.broadcast_to(consts["empty_pooled"], pooled.shape)
        return empty, pooled

    def networks(self, params, consts) -> tuple[dict, dict, dict]:
        """(student, teacher, target) params of the model: the LoRA on, off, and its EMA on."""
        if EMA_CONST not in consts:
            raise KeyError(
                f"consts[{EMA_CONST!r}]: the lcd loss reads the EMA of the LoRA factors (the "
                "trainer passes it, `stage_contract.ReadsEma`); give it when calling the loss"
            )
        lora = self.lora
        ema = jax.lax.stop_gradient(consts[EMA_CONST])
        target = lora.adapted(merge_params(ema, params))
        return lora.adapted(params), lora.adapter_off(params), target

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """The consistency distillation loss of one (micro-)batch, one PRNG key per example."""
        k_vae, k_drop, k_index, k_noise, k_w, k_low, k_level, k_augment = key_streams(keys, 8)
        text = {k: batch[k] for k in ("context", "pooled", "input_ids") if k in batch}
        context, pooled = self.model.text_context(consts, text, k_drop)
        latents, predict = self.conditioned(
            consts, batch, (k_vae, k_low, k_level, k_augment), context
        )
        student_params, teacher_params, target_params = self.networks(params, consts)
        guided = self.settings.guided

        def teacher(x, t, w):
            if not guided:
                return predict(teacher_params, x, t, context, pooled)
            negative, negative_pooled = self.negative(consts, context, pooled)
            both_pooled = None if pooled is None else jnp.concatenate([negative_pooled, pooled])
            twice = [jnp.concatenate([a, a]) for a in (x, t)]
            out = predict(teacher_params, *twice, jnp.concatenate([negative, context]), both_pooled)
            return guided_output(out, w)

        d = self.model.diffusion
        noise = losses.per_example_noise(k_noise, latents.shape[1:], d.offset_noise)
        tables = consts["lcd"]
        return consistency_distillation_loss(
            lambda x, t: predict(student_params, x, t, context, pooled),
            teacher,
            lambda x, t: predict(target_params, x, t, context, pooled),
            latents,
            noise,
            sample_points(k_index, k_w, tables, self.settings),
            tables,
            self.settings,
            self.model.prediction_type,
        )
