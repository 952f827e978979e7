"""`load_pipeline`: a diffusers-format pipeline folder (`model_index.json` + component folders,
safetensors or converted orbax) → a callable pipeline (DESIGN.md, contract 3)."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import jax.numpy as jnp

from mv2_jax.models.appearance import appearance_encoder, spatial_params
from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.pipelines.i2v import ImageToVideoPipeline
from mv2_jax.pipelines.t2i import TextToImagePipeline
from mv2_jax.pipelines.t2v import TextToVideoPipeline
from mv2_jax.pipelines.text import PromptEncoder, TextEncoder, load_tokenizer
from mv2_jax.pipelines.v2v import VideoToVideoPipeline
from mv2_jax.pipelines.vfi import is_vfi_folder, load_vfi_pipeline
from mv2_jax.weights.ip_adapter import load_ip_adapter
from mv2_jax.weights.load import load_component, read_config
from mv2_jax.weights.motion import load_motion_unet
from mv2_jax.weights.v2v import i2v_unet_from_v2v


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


def _text(folder: Path, index: dict, dtype) -> PromptEncoder:
    """The tokenizer(s) + text encoder(s) of an SD / SDXL-style pipeline folder."""
    sdxl = "text_encoder_2" in index and index["text_encoder_2"][0] is not None
    encoders = []
    for suffix in ("", "_2") if sdxl else ("",):
        module, params = load_component(folder / f"text_encoder{suffix}", dtype)
        encoders.append(TextEncoder(load_tokenizer(folder / f"tokenizer{suffix}"), module, params))
    return PromptEncoder(
        tuple(encoders),
        force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", sdxl),
    )


def _shared(folder: Path, index: dict, dtype) -> dict:
    """The fields every latent-diffusion pipeline reads the same way: VAE, text, scheduler."""
    vae, vae_params = load_component(folder / "vae", dtype)
    return dict(
        vae=vae,
        vae_params=vae_params,
        text=_text(folder, index, dtype),
        scheduler_config=json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
        unet_sample_size=read_config(folder / "unet").get("sample_size") or 64,
    )


def _stable_diffusion(folder: Path, index: dict, dtype) -> TextToImagePipeline:
    unet, unet_params = load_component(folder / "unet", dtype)
    shared = _shared(folder, index, dtype)
    return TextToImagePipeline(
        unet=unet,
        unet_params=unet_params,
        default_guidance_scale=5.0 if shared["text"].sdxl else 7.5,
        **shared,
    )


def _animatediff(folder: Path, index: dict, dtype) -> TextToVideoPipeline:
    """AnimateDiffPipeline: its `unet` is a UNetMotionModel (what diffusers' save_pretrained
    writes), or an SD UNet2DConditionModel merged with the `motion_adapter` folder as diffusers'
    `UNetMotionModel.from_unet2d` does."""
    unet_class = read_config(folder / "unet").get("_class_name")
    if unet_class == "UNet2DConditionModel":
        adapter = folder / "motion_adapter"
        if (index.get("motion_adapter") or [None])[0] is None or not adapter.is_dir():
            raise FileNotFoundError(
                f"{folder}: the unet is an image UNet2DConditionModel and there is no "
                "motion_adapter folder to add motion modules from; add one (a diffusers "
                "MotionAdapter), or convert an AnimateDiff checkpoint into the pipeline with "
                "convert/to_flax.py --motion-adapter"
            )
        unet, unet_params, _ = load_motion_unet(folder / "unet", adapter, dtype)
    else:
        unet, unet_params = load_component(folder / "unet", dtype)
        if not isinstance(unet, UNetMotionModel):
            raise ValueError(f"{folder / 'unet'}: a {unet_class}, not a UNetMotionModel")
    return TextToVideoPipeline(unet=unet, unet_params=unet_params, **_shared(folder, index, dtype))


def load_i2v_pipeline(
    path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    controlnet: str | os.PathLike | None = None,
    ip_adapter: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
) -> ImageToVideoPipeline:
    """An image-to-video pipeline from an AnimateDiff folder (diffusers' AnimateDiffPipeline or
    AnimateDiffSparseControlNetPipeline) or this project's ImageToVideoPipeline folder.

    Components come from the folder's `appearance_encoder/`, `controlnet/`, `image_encoder/`
    and `ip_adapter/*.safetensors` where present, or from the arguments (a ControlNet /
    SparseCtrl component folder, an IP-Adapter file with its CLIP image-encoder folder).
    Without an `appearance_encoder/`, reference attention uses a copy of the video UNet's own
    spatial weights (training-free, as "reference-only" does)."""
    folder = Path(path)
    index = read_model_index(folder)
    name = index.get("_class_name")
    if name not in I2V_PIPELINES:
        raise NotImplementedError(
            f"{folder}: a {name}; image → video takes one of {sorted(I2V_PIPELINES)} folders"
        )
    parts = _image_video_parts(folder, index, dtype, controlnet, ip_adapter, image_encoder)
    return ImageToVideoPipeline(**parts)


def load_v2v_pipeline(
    path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    controlnet: str | os.PathLike | None = None,
    ip_adapter: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
) -> VideoToVideoPipeline:
    """A video-to-video (super-resolution) pipeline. The folder is a VideoToVideoPipeline:

        model_index.json   {"_class_name": "VideoToVideoPipeline", ...}
        unet/              UNetMotionModel with in_channels = 2 × out_channels (noisy latents
                           then the upsampled low-res latents, concatenated at conv_in) and
                           num_class_embeds (the noise-level table; `v2v_unet_from_i2v`)
        vae/ text_encoder/ tokenizer/ scheduler/     as in an AnimateDiff folder
        appearance_encoder/ controlnet/ image_encoder/ ip_adapter/   optional, as for I2V

    components in diffusers' safetensors or this project's orbax form (`load_component`). An
    AnimateDiff or ImageToVideoPipeline folder (4-channel UNet) loads too and runs in SDEdit
    mode. Without an `appearance_encoder/`, reference attention uses the spatial weights of
    the I2V UNet inside the V2V one (`i2v_unet_from_v2v`), as for I2V."""
    folder = Path(path)
    index = read_model_index(folder)
    name = index.get("_class_name")
    if name not in V2V_PIPELINES:
        raise NotImplementedError(
            f"{folder}: a {name}; video → video takes one of {sorted(V2V_PIPELINES)} folders"
        )
    parts = _image_video_parts(folder, index, dtype, controlnet, ip_adapter, image_encoder)
    return VideoToVideoPipeline(**parts)


def _image_video_parts(folder, index, dtype, controlnet, ip_adapter, image_encoder) -> dict:
    """The fields of an image- or video-to-video pipeline read from `folder` (see
    `load_i2v_pipeline`)."""
    video = _animatediff(folder, index, dtype)
    unet, unet_params = video.unet, video.unet_params

    def part(given, name):
        found = folder / name
        return Path(given) if given is not None else found if found.exists() else None

    controlnet_path = part(controlnet, "controlnet")
    encoder_path = part(image_encoder, "image_encoder")
    adapter_path = part(ip_adapter, "ip_adapter")
    if adapter_path is not None and adapter_path.is_dir():
        files = sorted(adapter_path.glob("*.safetensors")) + sorted(adapter_path.glob("*.bin"))
        if not files:
            raise FileNotFoundError(f"{adapter_path}: no IP-Adapter .safetensors / .bin inside")
        adapter_path = files[0]
    if adapter_path is not None:
        if encoder_path is None:
            raise FileNotFoundError(
                f"IP-Adapter {adapter_path} needs its CLIP image encoder: pass image_encoder "
                "(a CLIPVisionModelWithProjection folder) or put one in image_encoder/"
            )
        unet, unet_params = load_ip_adapter(adapter_path, unet, unet_params)
    appearance_path = folder / "appearance_encoder"
    if appearance_path.exists():
        appearance = load_component(appearance_path, dtype)
    else:
        backbone, backbone_params = unet, unet_params
        if unet.in_channels == 2 * unet.out_channels:  # a V2V UNet: its I2V part
            config = {"in_channels": unet.in_channels, "out_channels": unet.out_channels}
            config, backbone_params = i2v_unet_from_v2v(config, unet_params)
            backbone = unet.clone(
                in_channels=config["in_channels"], num_class_embeds=None, class_embed_type=None
            )
        appearance = (appearance_encoder(backbone), spatial_params(backbone_params))
    shared = {f.name: getattr(video, f.name) for f in fields(video) if f.init}
    shared.update(unet=unet, unet_params=unet_params, trace_count=0)
    return dict(
        **shared,
        appearance=appearance,
        controlnet=None if controlnet_path is None else load_component(controlnet_path, dtype),
        image_encoder=None if adapter_path is None else load_component(encoder_path, dtype),
    )


I2V_PIPELINES = (
    "AnimateDiffPipeline",
    "AnimateDiffSparseControlNetPipeline",
    "ImageToVideoPipeline",
)
V2V_PIPELINES = (*I2V_PIPELINES, "VideoToVideoPipeline")

PIPELINES = {
    "StableDiffusionPipeline": _stable_diffusion,
    "StableDiffusionXLPipeline": _stable_diffusion,
    "AnimateDiffPipeline": _animatediff,
    "AnimateDiffSparseControlNetPipeline": lambda folder, _, dtype: load_i2v_pipeline(
        folder, dtype
    ),
    "ImageToVideoPipeline": lambda folder, _, dtype: load_i2v_pipeline(folder, dtype),
    "VideoToVideoPipeline": lambda folder, _, dtype: load_v2v_pipeline(folder, dtype),
    "FrameInterpolationPipeline": lambda folder, _, dtype: load_vfi_pipeline(folder, dtype),
}


def load_pipeline(path: str | os.PathLike, dtype=jnp.float32):
    """Load a pipeline folder; returns `pipe(prompt, negative_prompt=None, num_inference_steps,
    guidance_scale, scheduler, height, width, num_frames, latents, seed, mesh, ...)`; a frame
    interpolator (its component folder too) gives `pipe(video, factor, batch_size)`."""
    folder = Path(path)
    if is_vfi_folder(folder):
        return load_vfi_pipeline(folder, dtype)
    index = read_model_index(folder)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise NotImplementedError(
            f"{folder}: pipeline class {name!r} is not supported; supported: {sorted(PIPELINES)}"
        )
    return PIPELINES[name](folder, index, dtype)
