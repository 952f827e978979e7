"""The programs `benchmarks/plan.py` compiles, built from abstract params (`jax.ShapeDtypeStruct`s
with their shardings): nothing full-size is ever allocated.

- `sample`: one classifier-free-guided denoising step (the UNet on the doubled batch, the
  guidance mix, a DDIM update), bf16 params and compute, params sharded by the logical rules.
- `train`: the trainer's step (`make_train_step` on the stage's loss, AdamW, clipping, EMA,
  state donated), settings (dtypes, remat, trainable globs) from the stage's config file; the
  batch holds precomputed latents and text embeddings (`data.precomputed_dir`), so the VAE
  and text encoders are not in the step (except V2V, whose low-res input is encoded there).
- `lora`: the same step on a `LoraStage` (rank `lora_rank` on the config's targets, the base
  frozen in bf16).
- `dpo`: the same step on a `PreferenceStage` (Diffusion-DPO, full fine-tuning of the config's
  trainable params, the frozen reference sharded like them), configs/dpo.py's settings.

Stages are the trainer's classes, constructed directly from module configs instead of from a
pipeline folder (which would load weights).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/

SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "sample_size": 64,
}
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# guoyww/animatediff-motion-adapter-v1-5-2 (v2: with a motion mid block)
ANIMATEDIFF_ADAPTER = {
    "block_out_channels": [320, 640, 1280, 1280],
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}
SD_VAE = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
TEXT_LENGTH = 77


@dataclass(frozen=True)
class Model:
    """A planned model: its stage, the config (file:variant) its training settings come from,
    its UNet's diffusers config, its sample size, and its text conditioning's widths."""

    stage: str  # t2i | i2v | v2v
    config: str  # "t2i:sd15" → configs/t2i.py get_config("sd15")
    unet: dict
    size: int  # pixels (square)
    frames: int | None  # None: images
    context_dim: int
    pooled_dim: int | None = None  # SDXL's pooled text embedding
    vae: dict = field(default_factory=lambda: SD_VAE)


def _motion_unet(unet: dict, adapter: dict) -> dict:
    from mv2_jax.weights.motion import motion_config_from_unet2d

    return motion_config_from_unet2d(unet, adapter)


def _v2v_unet(unet: dict) -> dict:
    from mv2_jax.weights.v2v import v2v_unet_from_i2v

    return v2v_unet_from_i2v(unet, None, config_only=True)[0]


def _tiny(stage: str) -> Model:
    """configs/{stage}.py:tiny's model at 32² (× 4 frames for video)."""
    from configs.i2v import tiny_model as tiny_video
    from configs.t2i import tiny_model as tiny_image

    model = (tiny_image if stage == "t2i" else tiny_video)()
    unet = _v2v_unet(model["unet"]) if stage == "v2v" else model["unet"]
    frames = None if stage == "t2i" else 4
    vae = dict(model["vae"], sample_size=32)
    return Model(stage, f"{stage}:tiny", unet, 32, frames, 32, vae=vae)


def models() -> dict[str, Model]:
    """The planned models, by name: SD1.5 and SDXL (T2I), the paper's I2V (SD1.5 + AnimateDiff
    motion modules, 576² × 32 frames) and V2V (1024² × 32 frames) — without the appearance
    encoder and SparseCtrl ControlNet — and tiny ones (configs' `tiny` variants) for tests."""
    i2v_unet = _motion_unet(SD15_UNET, ANIMATEDIFF_ADAPTER)
    return {
        "sd15": Model("t2i", "t2i:sd15", SD15_UNET, 512, None, 768),
        "sdxl": Model("t2i", "t2i:sdxl", SDXL_UNET, 1024, None, 2048, pooled_dim=1280),
        "i2v": Model("i2v", "i2v:sd15", i2v_unet, 576, 32, 768),
        "v2v": Model("v2v", "v2v:sd15", _v2v_unet(i2v_unet), 1024, 32, 768),
        "tiny": _tiny("t2i"),
        "tiny_video": _tiny("i2v"),
        "tiny_v2v": _tiny("v2v"),
    }


def training_config(model: Model, program: str, lora_rank: int):
    """The ml_collections config of `model`'s stage that `program` trains with (dpo: wrapped by
    configs/dpo.py's `preference_run`); the appearance encoder and ControlNet switched off."""
    import importlib

    file, variant = model.config.split(":")
    config = importlib.import_module(f"configs.{file}").get_config(variant)
    config.i2v.appearance_encoder = config.i2v.controlnet = False
    if program == "dpo":
        from configs.dpo import preference_run

        config = preference_run(config, beta=5000.0)
    config.grad_accum_steps = 1  # accumulation scans micro-batches: the plan's batch is one
    if program == "lora":
        config.model.lora.rank = lora_rank
        config.model.lora.base_dtype = "bfloat16"
    return config


def build_stage(model: Model, config, param_dtype, mesh, attention: str, program: str):
    """The trainer's stage for `model` (its t2i / i2v / v2v class; in a `LoraStage` or
    `PreferenceStage` for `program` lora / dpo), with abstract frozen arrays (`consts`)."""
    from mv2_jax.models.remat import check_remat_policy
    from mv2_jax.training.i2v import ImageToVideoStage
    from mv2_jax.training.stage import dtype_of
    from mv2_jax.training.t2i import TextToImageStage
    from mv2_jax.training.v2v import VideoToVideoStage
    from mv2_jax.weights.load import build_module

    compute = dtype_of(config.compute_dtype)
    if program == "sample":
        compute = param_dtype
    unet, _ = build_module(model.unet, param_dtype)
    denoiser = unet.clone(
        dtype=compute,
        remat_policy=check_remat_policy(config.remat_policy) if program != "sample" else "none",
        attention_implementation=attention,
    )
    vae, _ = build_module(model.vae, jnp.float32)
    vae = vae.clone(attention_implementation=attention)
    replicated = NamedSharding(mesh, PartitionSpec())
    consts = {
        "alphas_cumprod": _abstract((1000,), jnp.float32, replicated),
        "empty_context": _abstract((1, TEXT_LENGTH, model.context_dim), jnp.float32, replicated),
    }
    if model.pooled_dim:
        consts["empty_pooled"] = _abstract((1, model.pooled_dim), jnp.float32, replicated)
    if model.stage == "v2v":  # its low-res input is encoded in the step
        from mv2_jax.training.stage import module_param_shapes

        shapes = module_param_shapes(vae, jnp.float32)
        consts["vae"] = jax.tree.map(lambda s: _abstract(s.shape, s.dtype, replicated), shapes)
    common = dict(
        param_dtype=param_dtype,
        seed=0,
        consts=consts,
        vae=vae,
        text_encoders=(),
        tokenizers=(),
        prediction_type="epsilon",
        diffusion=config.diffusion,
        sdxl=model.pooled_dim is not None,
    )
    if model.stage == "t2i":
        return TextToImageStage(**common, denoiser=denoiser, unet_folder=None)
    video = dict(
        denoiser=denoiser.clone(skip_motion_for_images=True),
        appearance=None,
        controlnet=None,
        unet_folder=None,
        motion_adapter=None,
        controlnet_folder=None,
    )
    if model.stage == "i2v":
        return ImageToVideoStage(**common, **video)
    return VideoToVideoStage(
        **common,
        **video,
        scale=float(config.v2v.scale),
        max_noise_level=int(config.v2v.max_noise_level),
        from_i2v=False,
    )


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def with_shardings(shapes, shardings):
    """A tree of `ShapeDtypeStruct`s carrying `shardings` (a tree like `shapes`)."""
    return jax.tree.map(lambda s, sh: _abstract(s.shape, s.dtype, sh), shapes, shardings)


def latent_shape(model: Model, batch: int) -> tuple[int, ...]:
    """`[B, (F,) h, w, 4]` latents of `batch` samples of `model` (its VAE's factor: 8 for SD's,
    2 for the tiny one)."""
    side = model.size // 2 ** (len(model.vae["block_out_channels"]) - 1)
    lead = (batch,) if model.frames is None else (batch, model.frames)
    return (*lead, side, side, 4)


def batch_input(mesh, shape, dtype=jnp.float32, frames: bool = False):
    """An abstract input `[B, ...]` sharded over the batch axes (and frames), as the trainer's
    `global_batch` places it (video inputs also split over `frames`, as the model will)."""
    from mv2_jax.parallel.sharding import batch_sharding

    sharding = batch_sharding(mesh, len(shape), frames=frames, shape=shape)
    return _abstract(shape, dtype, sharding)


# ---- sampling


def sampling_program(model: Model, mesh, batch: int, attention: str):
    """(jitted guided step, its abstract args, the stage) for `batch` samples (2·batch UNet rows
    under guidance)."""
    from configs.t2i import tiny_model
    from mv2_jax.diffusion.guidance import classifier_free_guidance
    from mv2_jax.diffusion.schedulers import make_scheduler
    from mv2_jax.parallel.rules import DEFAULT_RULES

    config = training_config(model, "train", 0)
    stage = build_stage(model, config, jnp.bfloat16, mesh, attention, "sample")
    shardings = stage.param_shardings(mesh, DEFAULT_RULES)
    params = with_shardings(stage.param_shapes(), shardings)
    scheduler = make_scheduler(tiny_model()["scheduler"], "ddim")
    replicated = NamedSharding(mesh, PartitionSpec())
    tables = jax.tree.map(
        lambda x: _abstract(np.shape(x), np.asarray(x).dtype, replicated),
        scheduler.tables(50, 50),
    )
    video = model.frames is not None
    latents = batch_input(mesh, latent_shape(model, batch), jnp.float32, video)
    inputs = {
        "latents": latents,
        "context": batch_input(mesh, (2 * batch, TEXT_LENGTH, model.context_dim)),
    }
    if model.pooled_dim:
        inputs["pooled"] = batch_input(mesh, (2 * batch, model.pooled_dim))
    if model.stage == "v2v":
        inputs["condition"] = batch_input(mesh, latents.shape, jnp.float32, video)
        inputs["levels"] = batch_input(mesh, (2 * batch,), jnp.int32)
    scalars = {
        "i": _abstract((), jnp.int32, replicated),
        "guidance": _abstract((), jnp.float32, replicated),
    }

    def step(params, inputs, tables, scalars):
        latents, i = inputs["latents"], scalars["i"]
        x = scheduler.scale_model_input(tables, latents, i)
        doubled = jnp.concatenate([x, x]).astype(stage.denoiser.dtype)
        t = jnp.full((doubled.shape[0],), tables["timesteps"][i])
        kwargs = {}
        if model.pooled_dim:
            kwargs["pooled"] = inputs["pooled"]
        if model.stage == "v2v":
            condition = jnp.concatenate([inputs["condition"]] * 2).astype(doubled.dtype)
            kwargs = {"condition": condition, "class_labels": inputs["levels"]}
        predict = stage.predictor(params, doubled, inputs["context"], **kwargs)
        uncond, cond = jnp.split(predict(doubled, t).astype(jnp.float32), 2)
        noise = classifier_free_guidance(uncond, cond, scalars["guidance"])
        state = scheduler.init_state(latents)
        return scheduler.step(tables, state, i, latents, noise, jnp.zeros_like(latents))[0]

    jitted = jax.jit(step, out_shardings=latents.sharding)
    return jitted, (params, inputs, tables, scalars), stage


# ---- training


def training_program(model: Model, mesh, batch: int, attention: str, program: str, lora_rank: int):
    """(jitted train step, its abstract args `(state, consts, batch)`, the stage, the trainable
    paths): the trainer's construction (`mv2_jax.training.trainer.train`) on abstract params."""
    from mv2_jax.training.dpo import DpoSettings, PreferenceStage
    from mv2_jax.training.lora import LoraStage, lora_settings
    from mv2_jax.training.optim import (
        learning_rate_schedule,
        make_optimizer,
        split_params,
        trainable_paths,
    )
    from mv2_jax.training.stage import dtype_of
    from mv2_jax.training.state import create_state, state_shardings
    from mv2_jax.training.step import make_train_step

    config = training_config(model, program, lora_rank)
    rules = tuple(tuple(rule) for rule in config.sharding_rules)
    settings = lora_settings(config)
    base_dtype = dtype_of(settings.base_dtype if settings else config.param_dtype)
    stage = build_stage(model, config, base_dtype, mesh, attention, program)
    if settings:
        from mv2_jax.lora.leaves import lora_targets

        targets = lora_targets(stage.param_shapes(), settings.targets)
        stage = LoraStage(inner=stage, settings=settings, targets=targets, seed=0)
    if program == "dpo":
        dpo = DpoSettings(float(config.dpo.beta), float(config.dpo.sft_weight))
        consts = dict(stage.consts)
        stage = PreferenceStage(
            inner=stage, model=stage, appearance_folder=None, settings=dpo, consts=consts
        )
    param_shardings = stage.param_shardings(mesh, rules)
    params = with_shardings(stage.param_shapes(), param_shardings)
    paths = trainable_paths(params, stage.trainable_patterns(config.trainable))
    if program == "dpo":  # full fine-tuning's frozen reference, sharded like what trains
        stage.consts["reference"] = split_params(params, paths)[0]
    optimizer = make_optimizer(config)
    state = jax.eval_shape(lambda p: create_state(p, optimizer, paths, config.seed), params)
    shardings = state_shardings(state, param_shardings, optimizer, paths, mesh)
    state = with_shardings(state, shardings)
    step = make_train_step(
        stage.loss,
        optimizer,
        paths,
        ema_decay=config.ema_decay,
        learning_rate=learning_rate_schedule(config),
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, out_shardings=(shardings, replicated), donate_argnums=(0,))
    return jitted, (state, stage.consts, training_batch(model, mesh, batch, program)), stage, paths


def training_batch(model: Model, mesh, batch: int, program: str) -> dict:
    """The abstract global batch of the step: precomputed latents `[B,(F,)h,w,4]` and text
    embeddings (DPO: both sides of each pair and a weight; V2V: the clips' pixels too)."""
    video = model.frames is not None
    latents = batch_input(mesh, latent_shape(model, batch), jnp.float32, video)
    out = {"context": batch_input(mesh, (batch, TEXT_LENGTH, model.context_dim))}
    if model.pooled_dim:
        out["pooled"] = batch_input(mesh, (batch, model.pooled_dim))
    if program == "dpo":
        out.update(chosen_latents=latents, rejected_latents=latents)
        out["weight"] = batch_input(mesh, (batch,))
    else:
        out["latents"] = latents
    if model.stage == "v2v":
        pixels = (*latents.shape[:-3], model.size, model.size, 3)
        out["pixels"] = batch_input(mesh, pixels, jnp.float32, video)
    return out


# ---- what the sharding implies


def motion_module_inputs(stage, unet_batch: int, model: Model) -> list[tuple[int, ...]]:
    """Shapes `[B·F, H, W, C]` of the input of every motion module call in one UNet forward of
    `unet_batch` videos (traced with `jax.eval_shape`; empty for image models)."""
    if model.frames is None:
        return []
    from mv2_jax.models.motion import AnimateDiffTransformer3D

    seen = []

    def record(next_fun, args, kwargs, context):
        motion = isinstance(context.module, AnimateDiffTransformer3D)
        if motion and context.method_name == "__call__":
            seen.append(tuple(args[0].shape))
        return next_fun(*args, **kwargs)

    unet = stage.denoiser.clone(skip_motion_for_images=False, remat_policy="none")
    latents = jax.ShapeDtypeStruct(latent_shape(model, unet_batch), jnp.float32)
    if model.stage == "v2v":
        latents = jax.ShapeDtypeStruct((*latents.shape[:-1], 8), jnp.float32)
    context = jax.ShapeDtypeStruct((unet_batch, TEXT_LENGTH, model.context_dim), jnp.float32)
    t = jax.ShapeDtypeStruct((unet_batch,), jnp.int32)
    kwargs = {"class_labels": t} if model.stage == "v2v" else {}

    def init(x, t, c):
        return unet.init(jax.random.key(0), x, t, c, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(init, latents, t, context)
    return seen
