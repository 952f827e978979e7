"""Tiny random diffusers pipelines (SD1.x-style and SDXL-style) saved to folders, for the
pipeline tests. Components come from tests/weights/tiny_models.py; SDXL adds a second, projecting
text encoder and the text-time micro-conditioning in its UNet; AnimateDiff adds a MotionAdapter."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    EulerDiscreteScheduler,
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

__all__ = ["tiny_animatediff_pipeline", "tiny_pipeline", "tiny_sdxl_pipeline"]

_CLIP_2 = {**CLIP, "hidden_size": 24, "intermediate_size": 40, "projection_dim": 20}
_TIME_DIM = 8


def tiny_sdxl_pipeline(folder: Path) -> StableDiffusionXLPipeline:
    """A tiny random SDXL-style pipeline, saved to `folder`."""
    unet = tiny_unet(
        cross_attention_dim=CLIP["hidden_size"] + _CLIP_2["hidden_size"],
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_DIM,
        projection_class_embeddings_input_dim=6 * _TIME_DIM + _CLIP_2["projection_dim"],
        use_linear_projection=True,
        transformer_layers_per_block=(2, 1),
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


def tiny_animatediff_pipeline(folder: Path) -> AnimateDiffPipeline:
    """A tiny random AnimateDiff pipeline, saved to `folder`: diffusers merges the SD UNet and
    the adapter into a UNetMotionModel (`unet/`) and saves the adapter too (`motion_adapter/`).
    The scheduler is AnimateDiff's usual DDIM (linear betas, linspace spacing)."""
    pipe = AnimateDiffPipeline(
        unet=tiny_unet(),
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
