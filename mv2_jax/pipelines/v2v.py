"""Video → video super-resolution (MagicVideo-V2's V2V stage, arXiv:2401.04468 §2): low-res
keyframes and a prompt → the same video at a higher resolution.

Two modes, chosen by the UNet and `strength`:
- *V2V UNet* (`in_channels` = 2 × latent channels, e.g. from `v2v_unet_from_i2v`): the low-res
  frames are VAE-encoded at their own size, upsampled to the target's latent size and
  noise-augmented at `noise_level` (`mv2_jax.diffusion.low_res`, shared with training); those
  latents are concatenated to the noisy latents at every step and the level enters as
  `class_labels` (both guidance halves);
- *SDEdit* (a 4-channel I2V / AnimateDiff UNet, or `strength` given; Meng et al. 2022): the
  frames are upsampled in pixels, encoded, noised to step `(1 − strength)·steps` and denoised,
  as img2img does (`Scheduler.start_index`, the sampler's first step).
The key image (`image`, default the first low-res frame) drives the I2V conditionings: appearance
encoder, ControlNet, IP-Adapter, noise prior. The VAE runs `decode_chunk_size` frames at a time
and, with `vae_tile_size`, in overlapping tiles, so its memory follows one chunk of tiles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.low_res import noise_augment, upsample_latents
from mv2_jax.media import to_uint8
from mv2_jax.pipelines.base import prompt_count
from mv2_jax.pipelines.defaults import DEFAULT_SDEDIT_STRENGTH, PAPER_V2V_SIZE, STAGE_DEFAULTS
from mv2_jax.pipelines.i2v import ImageToVideoPipeline, ImageToVideoRequest
from mv2_jax.pipelines.request import Prepared, check_unit_interval, from_arguments


@dataclass(frozen=True, kw_only=True, eq=False)
class VideoUpscaleRequest(ImageToVideoRequest):
    """`ImageToVideoRequest` plus the low-res `video`, its `noise_level` and SDEdit's
    `strength`; `image` (the key image) defaults to the video's first frame."""

    video: Any = None
    noise_level: int = 20
    strength: float | None = None
    noise_prior: str = "none"
    decode_chunk_size: int = 8

    def __post_init__(self):
        super().__post_init__()
        if self.video is None:
            raise ValueError("video: the low-res frames to upscale are required")
        if self.strength is not None:
            check_unit_interval(self.strength, "strength", open_below=True)


@dataclass
class VideoToVideoPipeline(ImageToVideoPipeline):
    """`pipe(video, prompt, ...) → videos [B,F,H,W,3]` in [0,1]; see the module docstring."""

    @property
    def takes_low_res(self) -> bool:
        """Whether the UNet takes the low-res latents as extra input channels (V2V mode)."""
        return self.unet.in_channels == 2 * self.latent_channels

    @property
    def default_size(self) -> int:
        native = self.unet_sample_size * self.vae_scale_factor
        return PAPER_V2V_SIZE if native >= 512 else native

    def request(
        self,
        video,
        prompt,
        negative_prompt=None,
        *,
        num_inference_steps: int = STAGE_DEFAULTS["v2v"].steps,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        latents: np.ndarray | None = None,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        num_videos_per_prompt: int = 1,
        guidance_rescale: float = 0.0,
        decode_chunk_size: int = 8,
        vae_tile_size: int | None = None,
        progress: bool = False,
        guidance_batching: str = "auto",
        image=None,
        noise_level: int = 20,
        strength: float | None = None,
        noise_prior: str = "none",
        **conditioning,
    ) -> VideoUpscaleRequest:
        """Videos `[B·num_videos_per_prompt, F, height, width, 3]` in [0,1] from the low-res
        `video` (`[F,H,W,3]` or one per prompt `[B,F,H,W,3]`, uint8 or float in [0,1]).

        `height`/`width`: the target (default 1048² for SD1.5-size models, as in the paper; else
        the model's size), at least the input's; the low-res frames are stretched to it.
        `noise_level` (int, traced): the augmentation of the low-res latents, 0 … the UNet's
        `num_class_embeds − 1` (training draws it from [0, 350] by default). `strength` in (0, 1]:
        SDEdit from the upsampled video (default 0.5 for a 4-channel UNet; with a V2V UNet,
        None starts from noise). `image`: the key image for the I2V conditionings (default the
        first low-res frame); `**conditioning`: `ImageToVideoPipeline`'s scales and options
        (`reference_scale`, `controlnet_scale`, `ip_adapter_scale`, `controlnet_frames`,
        `noise_prior_strength`), by keyword. `decode_chunk_size`: frames per VAE call (times
        B); `vae_tile_size`: VAE tiles of that many pixels (a multiple of 32 for an 8× VAE,
        0.25 overlap) or None for whole frames. `latents`: unit noise
        `[B, F, h, w, latent channels]`."""
        return from_arguments(VideoUpscaleRequest, locals())

    def prepare(self, request: VideoUpscaleRequest) -> Prepared:
        """The low-res frames read and checked against the model and the target size; then
        image-to-video's preparation with the key image (default: the first frame)."""
        frames = self._low_res_frames(request.video, prompt_count(request.prompt))
        count, low_frames, low_h, low_w = frames.shape[:4]
        if request.num_frames not in (None, low_frames):
            raise ValueError(
                f"num_frames={request.num_frames}, but the video has {low_frames} frames"
            )
        height, width = self.output_size(request)
        if height < low_h or width < low_w:
            raise ValueError(
                f"target {height}×{width} is smaller than the input's {low_h}×{low_w}; "
                "this pipeline only upscales: raise height/width"
            )
        factor = self.vae_scale_factor
        if self.takes_low_res and (low_h % factor or low_w % factor):
            raise ValueError(
                f"low-res frames {low_h}×{low_w}: the VAE encodes them at their own size, which "
                f"must be a multiple of {factor}; resize or crop the input"
            )
        self._check_channels()
        levels = self.unet.num_class_embeds
        if self.takes_low_res and levels is not None and not 0 <= request.noise_level < levels:
            raise ValueError(
                f"noise_level={request.noise_level}; the UNet embeds levels 0 to {levels - 1}"
            )
        tile = request.vae_tile_size
        if tile is not None and (tile < 4 * factor or tile % (4 * factor)):
            raise ValueError(f"vae_tile_size={tile}; use a multiple of {4 * factor}")
        strength = request.strength
        if strength is None and not self.takes_low_res:
            strength = DEFAULT_SDEDIT_STRENGTH
        image = request.image
        if image is None:
            image = frames[:, 0] if count > 1 else frames[0, 0]
        request = dataclasses.replace(
            request, video=frames, image=image, num_frames=low_frames, strength=strength
        )
        return super().prepare(request)

    def condition(self, request: VideoUpscaleRequest, prepared: Prepared, pooled) -> Prepared:
        """Image-to-video's conditionings, plus the low-res video and its noise level (V2V) or
        the first step of SDEdit."""
        prepared = super().condition(request, prepared, pooled)
        video = request.video  # one per prompt (or one for all), repeated per video
        video = np.repeat(video, prepared.program.shape[0] // len(video), axis=0)
        prepared = prepared.adding(
            {"concat_low_res": self.takes_low_res},
            inputs={"video": video},
            scalars={"noise_level": np.int32(request.noise_level)},
        )
        if request.strength is None:
            return prepared
        return self.starting_step(prepared, request.strength, request.num_inference_steps)

    # ------------------------------------------------------------------ host side

    def _low_res_frames(self, video, prompts: int) -> np.ndarray:
        """float32 `[1 or prompts, F, H, W, 3]` in [0,1]."""
        pixels = to_uint8(video, "video")
        if pixels.ndim == 4:
            pixels = pixels[None]
        if pixels.ndim != 5 or pixels.shape[-1] != 3:
            raise ValueError(
                f"video: expected RGB frames [F,H,W,3] or [B,F,H,W,3], got shape {pixels.shape}"
            )
        if pixels.shape[0] not in (1, prompts):
            raise ValueError(f"{pixels.shape[0]} videos for {prompts} prompts; give 1 or 1 each")
        return pixels.astype(np.float32) / 255.0

    def _check_channels(self) -> None:
        if self.unet.in_channels not in (self.latent_channels, 2 * self.latent_channels):
            raise ValueError(
                f"the UNet takes {self.unet.in_channels} input channels; a V2V UNet takes "
                f"{2 * self.latent_channels} (noisy + low-res latents), an I2V one "
                f"{self.latent_channels} (SDEdit mode)"
            )

    def conditions(self, program, params, inputs, scalars) -> dict:
        """The I2V conditionings, plus the low-res latents (V2V) or the upsampled video's
        latents to noise (SDEdit)."""
        out = super().conditions(program, params, inputs, scalars)
        video = inputs["video"]  # [B,F,H0,W0,3]
        batch, frames, h, w, _ = program.shape
        copies = 2 if program.use_cfg else 1
        chunk, tile = program.decode_chunk_size, program.vae_tile_size
        if program.concat_low_res:
            low_res = self.encode_images(params["vae"], video, chunk, tile)
            low_res = upsample_latents(low_res, (h, w))
            levels = jnp.full((batch,), scalars["noise_level"], jnp.int32)
            key = jax.random.fold_in(jax.random.key(scalars["seed"]), 3)
            noise = jax.random.normal(key, low_res.shape, jnp.float32)
            low_res = noise_augment(low_res, levels, noise)
            out["low_res"] = jnp.concatenate([low_res] * copies)
            if self.unet.num_class_embeds is not None or self.unet.class_embed_type is not None:
                out["class_labels"] = jnp.concatenate([levels] * copies)
        if program.init_latents:
            size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
            if video.shape[2:4] != size:
                video = jax.image.resize(video, (batch, frames, *size, 3), "linear")
            out["init_latents"] = self.encode_images(params["vae"], video, chunk, tile)
        return out

    def apply_unet(self, program, variables, inputs, x, t, **kwargs):
        if program.concat_low_res:
            x = jnp.concatenate([x, inputs["low_res"].astype(x.dtype)], axis=-1)
            kwargs["class_labels"] = inputs.get("class_labels")
        return super().apply_unet(program, variables, inputs, x, t, **kwargs)
