"""`load_pipeline`: a diffusers-format pipeline folder (`model_index.json` + component folders,
safetensors or converted orbax) → a callable pipeline (DESIGN.md, contract 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp

from mv2_jax.pipelines.t2i import TextToImagePipeline
from mv2_jax.pipelines.text import PromptEncoder, TextEncoder, load_tokenizer
from mv2_jax.weights.load import load_component, read_config


def read_model_index(folder: Path) -> dict:
    """`model_index.json` of a pipeline folder, with errors that say what to point at instead."""
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a pipeline folder, got a file")
    index_path = folder / "model_index.json"
    if not index_path.exists():
        if (folder / "config.json").exists():
            raise FileNotFoundError(
                f"{folder} is a component folder (config.json); point at the pipeline folder "
                "above it, or load the component with mv2_jax.load_component"
            )
        raise FileNotFoundError(
            f"{folder}: no model_index.json; point at a diffusers-format pipeline folder (or "
            "one written by convert/to_flax.py)"
        )
    return json.loads(index_path.read_text())


def _stable_diffusion(folder: Path, index: dict, dtype) -> TextToImagePipeline:
    sdxl = "text_encoder_2" in index and index["text_encoder_2"][0] is not None
    names = ("", "_2") if sdxl else ("",)
    encoders = []
    for suffix in names:
        module, params = load_component(folder / f"text_encoder{suffix}", dtype)
        encoders.append(TextEncoder(load_tokenizer(folder / f"tokenizer{suffix}"), module, params))
    unet, unet_params = load_component(folder / "unet", dtype)
    vae, vae_params = load_component(folder / "vae", dtype)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return TextToImagePipeline(
        unet=unet,
        unet_params=unet_params,
        vae=vae,
        vae_params=vae_params,
        text=PromptEncoder(
            tuple(encoders),
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", sdxl),
        ),
        scheduler_config=scheduler_config,
        default_guidance_scale=5.0 if sdxl else 7.5,
        unet_sample_size=read_config(folder / "unet").get("sample_size") or 64,
    )


PIPELINES = {
    "StableDiffusionPipeline": _stable_diffusion,
    "StableDiffusionXLPipeline": _stable_diffusion,
}


def load_pipeline(path: str | os.PathLike, dtype=jnp.float32):
    """Load a pipeline folder; returns `pipe(prompt, negative_prompt=None, num_inference_steps,
    guidance_scale, scheduler, height, width, num_frames, latents, seed, mesh, ...)`."""
    folder = Path(path)
    index = read_model_index(folder)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise NotImplementedError(
            f"{folder}: pipeline class {name!r} is not supported; supported: {sorted(PIPELINES)}"
        )
    return PIPELINES[name](folder, index, dtype)
