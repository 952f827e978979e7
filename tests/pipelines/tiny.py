"""Tiny random diffusers pipelines (SD1.x-style and SDXL-style) saved to folders, for the
pipeline tests. Components come from tests/weights/tiny_models.py; SDXL adds a second, projecting
text encoder and the text-time micro-conditioning in its UNet; AnimateDiff adds a MotionAdapter;
an LCM pipeline is SD1.x-style with a guidance-embedding UNet (`time_cond_proj_dim`)."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    EulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    MotionAdapter,
    StableDiffusionXLPipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from tests.reference import randomize_
from tests.weights.tiny_models import (
    CLIP,
    tiny_clip,
    tiny_pipeline,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

__all__ = ["tiny_animatediff_pipeline", "tiny_lcm_pipeline", "tiny_pipeline", "tiny_sdxl_pipeline"]

_CLIP_2 = {**CLIP, "hidden_size": 24, "intermediate_size": 40, "projection_dim": 20}
_TIME_DIM = 8


def tiny_sdxl_pipeline(folder: Path, **unet_overrides) -> StableDiffusionXLPipeline:
    """A tiny random SDXL-style pipeline, saved to `folder`; `unet_overrides` change its UNet's
    config (e.g. `time_cond_proj_dim`, as lcm-sdxl's)."""
    unet = tiny_unet(
        cross_attention_dim=CLIP["hidden_size"] + _CLIP_2["hidden_size"],
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_DIM,
        projection_class_embeddings_input_dim=6 * _TIME_DIM + _CLIP_2["projection_dim"],
        use_linear_projection=True,
        transformer_layers_per_block=(2, 1),
        **unet_overrides,
    )
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}_vocab")
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=tiny_clip(),
        text_encoder_2=randomize_(CLIPTextModelWithProjection(CLIPTextConfig(**_CLIP_2)), 3),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def tiny_lcm_pipeline(folder: Path, time_cond_proj_dim: int = 32) -> LatentConsistencyModelPipeline:
    """A tiny random LatentConsistencyModelPipeline (LCM_Dreamshaper_v7's layout: an SD1.x
    pipeline whose UNet embeds the guidance scale, `time_cond_proj_dim`, with its LCMScheduler
    config), saved to `folder`."""
    pipe = LatentConsistencyModelPipeline(
        unet=tiny_unet(time_cond_proj_dim=time_cond_proj_dim),
        vae=tiny_vae(),
        text_encoder=tiny_clip(),
        tokenizer=tiny_tokenizer(folder.parent / f"{folder.name}_vocab"),
        scheduler=LCMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


MOTION_ADAPTER = dict(
    block_out_channels=(16, 32),
    motion_layers_per_block=1,
    motion_num_attention_heads=2,
    motion_norm_num_groups=8,
    motion_max_seq_length=8,
)


def tiny_motion_adapter(seed: int = 4, **overrides) -> MotionAdapter:
    """Motion modules for `tiny_unet()` (same widths, layers and norm groups)."""
    return randomize_(MotionAdapter(**{**MOTION_ADAPTER, **overrides}), seed)


def tiny_animatediff_pipeline(folder: Path, **unet_overrides) -> AnimateDiffPipeline:
    """A tiny random AnimateDiff pipeline, saved to `folder`: diffusers merges the SD UNet
    (`unet_overrides` change its config) and the adapter into a UNetMotionModel (`unet/`) and
    saves the adapter too (`motion_adapter/`). The scheduler is AnimateDiff's usual DDIM
    (linear betas, linspace spacing)."""
    pipe = AnimateDiffPipeline(
        unet=tiny_unet(**unet_overrides),
        motion_adapter=tiny_motion_adapter(),
        vae=tiny_vae(),
        text_encoder=tiny_clip(),
        tokenizer=tiny_tokenizer(folder.parent / f"{folder.name}_vocab"),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="linear",
            clip_sample=False,
            timestep_spacing="linspace",
            steps_offset=1,
        ),
    )
    pipe.save_pretrained(folder)
    return pipe
