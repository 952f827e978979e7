"""Pipeline folders → pipelines, shaped like diffusers: `Pipeline.from_pretrained(path, *,
dtype, param_dtype, variant, **components)` on every pipeline class, and `load_pipeline`, which
picks the class from the folder's `model_index.json` (DESIGN.md, contract 3).

Folders are local: a diffusers-format folder (`model_index.json` + component folders,
safetensors or converted orbax). Hub ids are not accepted: nothing here downloads, since the
machines this runs on (TPU hosts, CI) often cannot reach a hub and a silent download of
gigabytes mid-run is worse than an error; `huggingface-cli download ID --local-dir DIR` first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mv2_jax.dtypes import parse_dtype
from mv2_jax.models.appearance import appearance_encoder, spatial_params
from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.pipelines.defaults import (
    DEFAULT_GUIDANCE_SCALE,
    LCM_GUIDANCE_SCALE,
    SDXL_GUIDANCE_SCALE,
)
from mv2_jax.pipelines.i2v import ImageToVideoPipeline
from mv2_jax.pipelines.t2i import TextToImagePipeline
from mv2_jax.pipelines.t2v import TextToVideoPipeline
from mv2_jax.pipelines.text import PromptEncoder, TextEncoder, load_tokenizer
from mv2_jax.pipelines.v2v import VideoToVideoPipeline
from mv2_jax.pipelines.vfi import FrameInterpolationPipeline, is_vfi_folder, vfi_model_folder
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


@dataclass
class PipelineParts:
    """The components of the pipeline folder `folder`, read with `dtype` (compute),
    `param_dtype` (storage) and `variant`, or taken from `replacements` (`name=(module, params)`
    or `name=folder`; a tokenizer or scheduler config as the object itself). `check_used`
    names any replacement the pipeline class has no use for."""

    folder: Path
    index: dict
    dtype: Any = jnp.float32
    param_dtype: Any = None
    variant: str | None = None
    replacements: dict = field(default_factory=dict)
    shared: dict | None = None  # components read by earlier loads, see `from_pretrained`
    _used: set = field(default_factory=set)

    def given(self, name: str):
        """The caller's replacement for component `name`, or None."""
        self._used.add(name)
        return self.replacements.get(name)

    def path(self, name: str) -> Path | None:
        """The folder (or file) of component `name`: the replacement's, else the folder's own
        if present."""
        given = self.given(name)
        if given is not None and not isinstance(given, tuple):
            return Path(given)
        own = self.folder / name
        return own if given is None and own.exists() else None

    def model(self, name: str, required: bool = True) -> tuple[Any, Any] | None:
        """`(module, params)` of component `name`."""
        given = self.given(name)
        if isinstance(given, tuple):
            if len(given) != 2:
                raise ValueError(f"{name}=: give (module, params) or a component folder")
            return given
        path = self.path(name)
        if path is None:
            if required:
                raise FileNotFoundError(f"{self.folder}: no {name}/ component folder")
            return None
        return self.load(path)

    def load(self, path: Path) -> tuple[Any, Any]:
        return load_component(path, self.dtype, param_dtype=self.param_dtype, variant=self.variant)

    def check_used(self, pipeline: str) -> None:
        unused = sorted(set(self.replacements) - self._used)
        if unused:
            raise TypeError(
                f"{pipeline} has no component named {', '.join(unused)}; its components: "
                f"{', '.join(sorted(self._used))}"
            )


def _text(parts: PipelineParts) -> PromptEncoder:
    """The tokenizer(s) + text encoder(s) of an SD / SDXL-style pipeline folder."""
    sdxl = (parts.index.get("text_encoder_2") or [None])[0] is not None
    sdxl = sdxl or parts.replacements.get("text_encoder_2") is not None
    encoders = []
    for suffix in ("", "_2") if sdxl else ("",):
        module, params = parts.model(f"text_encoder{suffix}")
        tokenizer = parts.given(f"tokenizer{suffix}")
        if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
            tokenizer = load_tokenizer(tokenizer or parts.folder / f"tokenizer{suffix}")
        encoders.append(TextEncoder(tokenizer, module, params))
    return PromptEncoder(
        tuple(encoders),
        force_zeros_for_empty_prompt=parts.index.get("force_zeros_for_empty_prompt", sdxl),
    )


def _scheduler_config(parts: PipelineParts) -> dict:
    given = parts.given("scheduler")
    if isinstance(given, dict):
        return dict(given)
    folder = Path(given) if given is not None else parts.folder / "scheduler"
    return json.loads((folder / "scheduler_config.json").read_text())


def _shared(parts: PipelineParts) -> dict:
    """The fields every latent-diffusion pipeline reads the same way: VAE, text, scheduler,
    and the UNet's native size (its config's `sample_size`; 64 when a given UNet has none)."""
    given = parts.replacements.get("unet")
    unet_folder = parts.folder / "unet" if given is None or isinstance(given, tuple) else given
    config = Path(unet_folder) / "config.json"
    sample_size = json.loads(config.read_text()).get("sample_size") if config.exists() else None
    vae, vae_params = parts.model("vae")
    return dict(
        vae=vae,
        vae_params=vae_params,
        text=_text(parts),
        scheduler_config=_scheduler_config(parts),
        unet_sample_size=sample_size or 64,
    )


def _stable_diffusion(parts: PipelineParts) -> TextToImagePipeline:
    """An SD1.x/2.x, SDXL or LatentConsistencyModel folder (an SD layout whose UNet has
    `time_cond_proj_dim`), with its diffusers pipeline's default guidance."""
    unet, unet_params = parts.model("unet")
    shared = _shared(parts)
    guidance = SDXL_GUIDANCE_SCALE if shared["text"].sdxl else DEFAULT_GUIDANCE_SCALE
    if parts.index.get("_class_name") == "LatentConsistencyModelPipeline":
        guidance = LCM_GUIDANCE_SCALE
    return TextToImagePipeline(
        unet=unet, unet_params=unet_params, default_guidance_scale=guidance, **shared
    )


def _motion_unet(parts: PipelineParts) -> tuple[UNetMotionModel, Any]:
    """An AnimateDiff folder's UNet: a UNetMotionModel (what diffusers' save_pretrained
    writes), or an SD UNet2DConditionModel merged with the `motion_adapter` folder as diffusers'
    `UNetMotionModel.from_unet2d` does."""
    given = parts.given("unet")
    if isinstance(given, tuple):
        unet, unet_params = given
    else:
        unet_folder = Path(given) if given is not None else parts.folder / "unet"
        unet_class = read_config(unet_folder).get("_class_name")
        if unet_class == "UNet2DConditionModel":
            adapter = parts.path("motion_adapter")
            if adapter is None or not adapter.is_dir():
                raise FileNotFoundError(
                    f"{parts.folder}: the unet is an image UNet2DConditionModel and there is no "
                    "motion_adapter folder to add motion modules from; add one (a diffusers "
                    "MotionAdapter), or convert an AnimateDiff checkpoint into the pipeline "
                    "with convert/to_flax.py --motion-adapter"
                )
            unet, unet_params, _ = load_motion_unet(unet_folder, adapter, parts.dtype)
            unet_params = _as_storage(unet_params, parts)
        else:
            unet, unet_params = parts.load(unet_folder)
    if not isinstance(unet, UNetMotionModel):
        raise ValueError(f"unet: a {type(unet).__name__}, not a UNetMotionModel")
    return unet, unet_params


def _as_storage(params, parts: PipelineParts):
    if parts.param_dtype is None:
        return params
    dtype = parse_dtype(parts.param_dtype)
    return jax.tree.map(lambda p: p.astype(dtype), params)


def _animatediff(parts: PipelineParts) -> TextToVideoPipeline:
    unet, unet_params = _motion_unet(parts)
    return TextToVideoPipeline(unet=unet, unet_params=unet_params, **_shared(parts))


def _image_video(parts: PipelineParts, cls):
    """An image- or video-to-video pipeline (see `ImageToVideoPipeline.from_pretrained`)."""
    unet, unet_params = _motion_unet(parts)
    shared = _shared(parts)
    adapter_path = parts.path("ip_adapter")
    if adapter_path is not None and adapter_path.is_dir():
        files = sorted(adapter_path.glob("*.safetensors")) + sorted(adapter_path.glob("*.bin"))
        if not files:
            raise FileNotFoundError(f"{adapter_path}: no IP-Adapter .safetensors / .bin inside")
        adapter_path = files[0]
    image_encoder = parts.model("image_encoder", required=False)
    if adapter_path is not None:
        if image_encoder is None:
            raise FileNotFoundError(
                f"IP-Adapter {adapter_path} needs its CLIP image encoder: pass image_encoder "
                "(a CLIPVisionModelWithProjection folder) or put one in image_encoder/"
            )
        unet, unet_params = load_ip_adapter(adapter_path, unet, unet_params)
    appearance = parts.model("appearance_encoder", required=False)
    if appearance is None:
        appearance = _spatial_copy(unet, unet_params)
    return cls(
        unet=unet,
        unet_params=unet_params,
        **shared,
        appearance=appearance,
        controlnet=parts.model("controlnet", required=False),
        image_encoder=image_encoder if adapter_path is not None else None,
    )


def _spatial_copy(unet, unet_params) -> tuple[Any, Any]:
    """Reference attention without an `appearance_encoder/`: the video UNet's own spatial
    weights (training-free, as "reference-only" does); of a V2V UNet, its I2V part."""
    if unet.in_channels == 2 * unet.out_channels:
        config = {"in_channels": unet.in_channels, "out_channels": unet.out_channels}
        config, unet_params = i2v_unet_from_v2v(config, unet_params)
        unet = unet.clone(
            in_channels=config["in_channels"], num_class_embeds=None, class_embed_type=None
        )
    return appearance_encoder(unet), spatial_params(unet_params)


I2V_PIPELINES = (
    "AnimateDiffPipeline",
    "AnimateDiffSparseControlNetPipeline",
    "ImageToVideoPipeline",
)
V2V_PIPELINES = (*I2V_PIPELINES, "VideoToVideoPipeline")
# Each pipeline class: the folder classes it reads, and how.
BUILDERS = {
    TextToImagePipeline: (
        ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "LatentConsistencyModelPipeline"),
        _stable_diffusion,
    ),
    TextToVideoPipeline: (("AnimateDiffPipeline",), _animatediff),
    ImageToVideoPipeline: (I2V_PIPELINES, lambda parts: _image_video(parts, ImageToVideoPipeline)),
    VideoToVideoPipeline: (V2V_PIPELINES, lambda parts: _image_video(parts, VideoToVideoPipeline)),
}
# A folder class → the pipeline class `load_pipeline` makes of it.
PIPELINES = {
    "StableDiffusionPipeline": TextToImagePipeline,
    "StableDiffusionXLPipeline": TextToImagePipeline,
    "LatentConsistencyModelPipeline": TextToImagePipeline,
    "AnimateDiffPipeline": TextToVideoPipeline,
    "AnimateDiffSparseControlNetPipeline": ImageToVideoPipeline,
    "ImageToVideoPipeline": ImageToVideoPipeline,
    "VideoToVideoPipeline": VideoToVideoPipeline,
    "FrameInterpolationPipeline": FrameInterpolationPipeline,
}


def from_pretrained(
    cls,
    path: str | os.PathLike,
    *,
    dtype=None,
    param_dtype=None,
    variant=None,
    shared_components: dict | None = None,
    **components,
):
    """A `cls` pipeline from the local pipeline folder `path` (see the module docstring): what
    every pipeline class's `from_pretrained` runs.

    `dtype`: compute dtype (default float32); `param_dtype`: storage dtype of the params
    (default: `dtype`), e.g. float32 params with bfloat16 compute. `variant="fp16"` reads
    `*.fp16.safetensors` (and sharded `*.fp16.safetensors.index.json`) as diffusers does.
    `**components` replaces a component: `unet=(module, params)` or `unet="path/to/unet"`;
    a `tokenizer` or a `scheduler` config dict as is; `controlnet`, `image_encoder`,
    `ip_adapter` (a file) and `appearance_encoder` add them to an image-to-video pipeline.
    `shared_components`: a dict to pass to several loads (e.g. the stages of a cascade, whose
    folders link one VAE and text encoder): a component folder read by one is reused by the
    next, not read again."""
    if cls is FrameInterpolationPipeline:
        return _interpolator(path, dtype, param_dtype, components)
    if cls not in BUILDERS:
        raise TypeError(f"{cls.__name__} is not a pipeline class with from_pretrained")
    folder = Path(path)
    _refuse_hub_id(path, folder)
    index = read_model_index(folder)
    name = index.get("_class_name")
    accepted, build = BUILDERS[cls]
    if name not in accepted:
        raise NotImplementedError(
            f"{folder}: a {name} folder; {cls.__name__} reads {', '.join(accepted)} folders "
            "(mv2_jax.load_pipeline picks the class for you)"
        )
    parts = PipelineParts(
        folder,
        index,
        jnp.float32 if dtype is None else parse_dtype(dtype),
        None if param_dtype is None else parse_dtype(param_dtype),
        variant,
        dict(components),
        shared_components,
    )
    pipe = build(parts)
    parts.check_used(cls.__name__)
    return pipe


def _interpolator(path, dtype, param_dtype, components) -> FrameInterpolationPipeline:
    given = components.pop("interpolator", None)
    if components:
        raise TypeError(f"FrameInterpolationPipeline has no component {', '.join(components)}")
    if isinstance(given, tuple):
        return FrameInterpolationPipeline(*given)
    folder = vfi_model_folder(given or path)
    dtype = jnp.float32 if dtype is None else parse_dtype(dtype)
    return FrameInterpolationPipeline(*load_component(folder, dtype, param_dtype=param_dtype))


def _refuse_hub_id(path, folder: Path) -> None:
    if not folder.exists() and isinstance(path, str) and path.count("/") == 1:
        raise FileNotFoundError(
            f"{path}: no such folder. Hub ids are not accepted (nothing here downloads); "
            f"download it first, e.g. `huggingface-cli download {path} --local-dir DIR`, "
            "and pass DIR"
        )


def load_i2v_pipeline(path: str | os.PathLike, dtype=jnp.float32, **components):
    """`ImageToVideoPipeline.from_pretrained(path, dtype=dtype, **components)`: an AnimateDiff
    folder (diffusers' AnimateDiffPipeline or AnimateDiffSparseControlNetPipeline) or this
    project's ImageToVideoPipeline folder, with the `controlnet`, `ip_adapter` and
    `image_encoder` given or found in the folder."""
    return ImageToVideoPipeline.from_pretrained(path, dtype=dtype, **_drop_none(components))


def load_v2v_pipeline(path: str | os.PathLike, dtype=jnp.float32, **components):
    """`VideoToVideoPipeline.from_pretrained(path, dtype=dtype, **components)`. The folder is a
    VideoToVideoPipeline:

        model_index.json   {"_class_name": "VideoToVideoPipeline", ...}
        unet/              UNetMotionModel with in_channels = 2 × out_channels (noisy latents
                           then the upsampled low-res latents, concatenated at conv_in) and
                           num_class_embeds (the noise-level table; `v2v_unet_from_i2v`)
        vae/ text_encoder/ tokenizer/ scheduler/     as in an AnimateDiff folder
        appearance_encoder/ controlnet/ image_encoder/ ip_adapter/   optional, as for I2V

    components in diffusers' safetensors or this project's orbax form (`load_component`). An
    AnimateDiff or ImageToVideoPipeline folder (4-channel UNet) loads too and runs in SDEdit
    mode."""
    return VideoToVideoPipeline.from_pretrained(path, dtype=dtype, **_drop_none(components))


def _drop_none(components: dict) -> dict:
    return {name: value for name, value in components.items() if value is not None}


def load_pipeline(
    path: str | os.PathLike, dtype=jnp.float32, *, param_dtype=None, variant=None, **components
):
    """Load a pipeline folder as the pipeline class its `model_index.json` names (`PIPELINES`);
    the keywords are `from_pretrained`'s. Returns `pipe(prompt, negative_prompt=None, *,
    num_inference_steps, guidance_scale, scheduler, height, width, num_frames, latents, seed,
    mesh, ...)`; a frame interpolator (its component folder too) gives `pipe(video, factor,
    batch_size)`."""
    folder = Path(path)
    if is_vfi_folder(folder):
        cls = FrameInterpolationPipeline
    else:
        _refuse_hub_id(path, folder)
        name = read_model_index(folder).get("_class_name")
        if name not in PIPELINES:
            raise NotImplementedError(
                f"{folder}: pipeline class {name!r} is not supported; supported: "
                f"{sorted(PIPELINES)}"
            )
        cls = PIPELINES[name]
    return from_pretrained(
        cls, folder, dtype=dtype, param_dtype=param_dtype, variant=variant, **components
    )
