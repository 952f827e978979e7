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

from dataclasses import dataclass, fields, replace

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.low_res import noise_augment, upsample_latents
from mv2_jax.media import to_uint8
from mv2_jax.pipelines.i2v import ImageToVideoPipeline, ImageVideoRequest

# The paper's V2V output (§3): 1048² × 32 frames from ≈600² keyframes, for SD1.5-size models.
PAPER_SIZE = 1048
# SDEdit's strength when the UNet takes no low-res channels and none is given.
DEFAULT_SDEDIT_STRENGTH = 0.5


@dataclass(frozen=True)
class VideoUpscaleRequest(ImageVideoRequest):
    """`ImageVideoRequest` plus the V2V mode and the VAE's tiling (static)."""

    concat_low_res: bool = False
    sdedit: bool = False
    vae_tile_size: int | None = None


@dataclass
class VideoToVideoPipeline(ImageToVideoPipeline):
    """`pipe(video, prompt, ...) → videos [B,F,H,W,3]` in [0,1]; see the module docstring."""

    _pending: dict | None = None  # the V2V inputs of the call in progress (host side)
    _vae_tiling: int | None = None  # the tile size of the function being traced

    @property
    def latent_channels(self) -> int:
        return self.unet.out_channels

    @property
    def takes_low_res(self) -> bool:
        """Whether the UNet takes the low-res latents as extra input channels (V2V mode)."""
        return self.unet.in_channels == 2 * self.latent_channels

    @property
    def default_size(self) -> int:
        native = self.unet_sample_size * self.vae_scale_factor
        return PAPER_SIZE if native >= 512 else native

    def __call__(
        self,
        video,
        prompt,
        negative_prompt=None,
        num_inference_steps: int = 25,
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
        progress: bool = False,
        *,
        image=None,
        noise_level: int = 20,
        strength: float | None = None,
        vae_tile_size: int | None = None,
        noise_prior: str = "none",
        **conditioning,
    ) -> np.ndarray:
        """Videos `[B·num_videos_per_prompt, F, height, width, 3]` in [0,1] from the low-res
        `video` (`[F,H,W,3]` or one per prompt `[B,F,H,W,3]`, uint8 or float in [0,1]).

        `height`/`width`: the target (default 1048² for SD1.5-size models, as in the paper; else
        the model's size), at least the input's; the low-res frames are stretched to it.
        `noise_level` (int, traced): the augmentation of the low-res latents, 0 … the UNet's
        `num_class_embeds − 1` (training draws it from [0, 350] by default). `strength` in (0, 1]:
        SDEdit from the upsampled video (default 0.5 for a 4-channel UNet; with a V2V UNet,
        None starts from noise). `image`: the key image for the I2V conditionings (default the
        first low-res frame); `**conditioning`: `ImageToVideoPipeline`'s scales and options.
        `decode_chunk_size`: frames per VAE call (times B); `vae_tile_size`: VAE tiles of that
        many pixels (a multiple of 32 for an 8× VAE, 0.25 overlap) or None for whole frames.
        `latents`: unit noise `[B, F, h, w, latent channels]`."""
        frames = self._low_res_frames(video, 1 if isinstance(prompt, str) else len(prompt))
        count, low_frames, low_h, low_w = frames.shape[:4]
        if num_frames not in (None, low_frames):
            raise ValueError(f"num_frames={num_frames}, but the video has {low_frames} frames")
        height, width = height or self.default_size, width or self.default_size
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
        sdedit = strength is not None or not self.takes_low_res
        if sdedit:
            strength = DEFAULT_SDEDIT_STRENGTH if strength is None else strength
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength must be in (0, 1], got {strength}")
        levels = self.unet.num_class_embeds
        if self.takes_low_res and levels is not None and not 0 <= noise_level < levels:
            raise ValueError(f"noise_level={noise_level}; the UNet embeds levels 0 to {levels - 1}")
        if vae_tile_size is not None and vae_tile_size < 4 * factor:
            raise ValueError(f"vae_tile_size={vae_tile_size}; use a multiple of {4 * factor}")
        if image is None:
            image = frames[:, 0] if count > 1 else frames[0, 0]
        self._pending = dict(
            video=frames,
            concat_low_res=self.takes_low_res,
            sdedit=sdedit,
            strength=strength,
            noise_level=noise_level,
            vae_tile_size=vae_tile_size,
        )
        try:
            return super().__call__(
                image, prompt, negative_prompt, num_inference_steps, guidance_scale, scheduler,
                height, width, low_frames, latents, seed, mesh, num_videos_per_prompt,
                guidance_rescale, decode_chunk_size, progress, noise_prior=noise_prior,
                **conditioning,
            )  # fmt: skip
        finally:
            self._pending = None

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

    def prepare(self, batch: int, *, latents, **settings):
        """`TextToVideoPipeline.prepare` with the latents' channels those the UNet predicts
        (a V2V UNet takes twice as many)."""
        request, scalars = super().prepare(batch, latents=None, **settings)
        shape = (*request.shape[:-1], self.latent_channels)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} ([B, F, h, w, C], channels-last), "
                f"got {tuple(latents.shape)}"
            )
        return replace(request, shape=shape), scalars

    def run(self, request, inputs, scalars, num_inference_steps, mesh):
        """`ImageToVideoPipeline.run` with the low-res video, noise level and first step."""
        pending = self._pending
        request = VideoUpscaleRequest(
            **{f.name: getattr(request, f.name) for f in fields(ImageVideoRequest)},
            concat_low_res=pending["concat_low_res"],
            sdedit=pending["sdedit"],
            vae_tile_size=pending["vae_tile_size"],
        )
        start = 0
        if request.sdedit:
            start = request.scheduler.start_index(num_inference_steps, pending["strength"])
            if start >= int(scalars["tables"]["num_steps"]):
                raise ValueError(
                    f"strength {pending['strength']} with {num_inference_steps} steps leaves "
                    "no step to run; raise strength or num_inference_steps"
                )
        video = pending["video"]  # one per prompt (or one for all), repeated per video
        video = np.repeat(video, request.shape[0] // len(video), axis=0)
        inputs = dict(inputs, video=jnp.asarray(video))
        scalars = dict(
            scalars, noise_level=jnp.int32(pending["noise_level"]), start=jnp.int32(start)
        )
        return super().run(request, inputs, scalars, num_inference_steps, mesh)

    # ------------------------------------------------------------------ traced

    def _generate(self, request, params, inputs, scalars):
        self._vae_tiling = request.vae_tile_size  # read by the VAE calls while this traces
        return super()._generate(request, params, inputs, scalars)

    def _conditions(self, request: VideoUpscaleRequest, params, inputs, scalars) -> dict:
        """The I2V conditionings, plus the low-res latents (V2V) or the upsampled video's
        latents to noise (SDEdit)."""
        out = super()._conditions(request, params, inputs, scalars)
        video = inputs["video"]  # [B,F,H0,W0,3]
        batch, frames, h, w, _ = request.shape
        copies = 2 if request.use_cfg else 1
        if request.concat_low_res:
            low_res = upsample_latents(self.encode_video(params["vae"], video, request), (h, w))
            levels = jnp.full((batch,), scalars["noise_level"], jnp.int32)
            key = jax.random.fold_in(jax.random.key(scalars["seed"]), 3)
            noise = jax.random.normal(key, low_res.shape, jnp.float32)
            low_res = noise_augment(low_res, levels, noise)
            out["low_res"] = jnp.concatenate([low_res] * copies)
            if self.unet.num_class_embeds is not None or self.unet.class_embed_type is not None:
                out["class_labels"] = jnp.concatenate([levels] * copies)
        if request.sdedit:
            size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
            if video.shape[2:4] != size:
                video = jax.image.resize(video, (batch, frames, *size, 3), "linear")
            out["init_latents"] = self.encode_video(params["vae"], video, request)
            out["start"] = scalars["start"]
        return out

    def initial_latents(self, params, inputs, noise, scheduler, tables) -> jax.Array:
        """SDEdit: the upsampled video's latents noised to the first step run (as img2img);
        else the noise at the scheduler's initial sigma."""
        if "init_latents" not in inputs:
            return super().initial_latents(params, inputs, noise, scheduler, tables)
        return scheduler.add_noise(tables, inputs["init_latents"], noise, inputs["start"])

    def apply_unet(self, variables, inputs, x, t, **kwargs):
        if "low_res" in inputs:
            x = jnp.concatenate([x, inputs["low_res"].astype(x.dtype)], axis=-1)
            kwargs["class_labels"] = inputs.get("class_labels")
        return super().apply_unet(variables, inputs, x, t, **kwargs)

    def encode_video(self, vae_params, video: jax.Array, request) -> jax.Array:
        """Frames `[B,F,H,W,3]` in [0,1] → diffusion latents `[B,F,h,w,C]` (posterior means),
        `decode_chunk_size` frames (× B) per VAE call, tiled when `vae_tile_size` is set."""
        tile = request.vae_tile_size
        posterior = self.vae.apply(
            {"params": vae_params},
            2 * video - 1,
            request.decode_chunk_size,
            tile is not None,
            tile,
            method="encode_video",
        )
        return self.vae.to_diffusion_latents(posterior.mode())

    def _encode(self, vae_params, image):
        """The key image's latents, in tiles when the call tiles the VAE."""
        if self._vae_tiling is None:
            return super()._encode(vae_params, image)
        posterior = self.vae.apply(
            {"params": vae_params}, 2 * image - 1, self._vae_tiling, method="tiled_encode"
        )
        return self.vae.to_diffusion_latents(posterior.mode())

    def decode_video(self, vae_params, latents: jax.Array, chunk: int) -> jax.Array:
        """Video latents → frames `[B,F,H,W,3]` in [0,1], `chunk` frames (× B) per VAE call,
        tiled when the call tiles the VAE."""
        tile = self._vae_tiling
        images = self.vae.apply(
            {"params": vae_params},
            self.vae.from_diffusion_latents(latents),
            chunk,
            tile is not None,
            tile,
            method="decode_video",
        )
        return jnp.clip(images / 2 + 0.5, 0.0, 1.0)
