"""Text → video with an AnimateDiff-style motion UNet: prompt embeddings, one jitted denoise
(`lax.scan`) of video latents `[B,F,h,w,C]`, then the VAE decoding the frames in chunks.

Prompt embeddings, guidance scale and rescale, seed and step table are traced inputs, so a new
prompt, seed, guidance or step count reuses the compiled function (`trace_count` shows it).

Extending (the image-to-video pipeline does): everything per-call and batched travels in one
`inputs` dict, every traced scalar in one `scalars` dict, and the generate function calls two
hooks that a subclass overrides —
- `initial_latents(params, inputs, noise, scheduler, tables)`: the starting latents (default:
  `noise · init_noise_sigma`; a latent noise prior goes here);
- `predict_noise(params, inputs, x, t)`: one model evaluation on `x [N,F,h,w,C]` (ControlNet
  residuals, reference-attention features, IP-Adapter image embeds go here);
plus `components()` for extra models whose params are placed on the mesh with the UNet's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.sampler import denoise, steps_bucket
from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.pipelines.base import (
    LatentDiffusionPipeline,
    as_list,
    check_size,
    place_batch,
    place_replicated,
    starting_noise,
)


@dataclass(frozen=True)
class VideoRequest:
    """The static (shape-deciding) settings of one call; part of the compile key."""

    scheduler: Any
    use_cfg: bool
    shape: tuple[int, ...]  # latents [B, F, h, w, C]
    decode_chunk_size: int
    progress: bool


@dataclass
class TextToVideoPipeline(LatentDiffusionPipeline):
    """`pipe(prompt, ...) → videos [B,F,H,W,3]` in [0,1] (DESIGN.md, contract 3)."""

    default_num_frames: int = 16

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 50,
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
        decode_chunk_size: int = 16,
        progress: bool = False,
    ) -> np.ndarray:
        """Videos `[B·num_videos_per_prompt, F, H, W, 3]` in [0,1]. `latents`, if given, are
        channels-last unit Gaussian noise `[B, F, h, w, C]` (scaled here by the scheduler's
        initial sigma, as diffusers does). The VAE decodes `decode_chunk_size` frames at a time,
        so long videos need memory for one chunk of full-size frames only."""
        context, request, scalars = self.start(
            prompt,
            negative_prompt,
            num_videos_per_prompt,
            guidance_scale,
            num_inference_steps=num_inference_steps,
            scheduler=scheduler,
            height=height,
            width=width,
            num_frames=num_frames,
            latents=latents,
            seed=seed,
            guidance_rescale=guidance_rescale,
            decode_chunk_size=decode_chunk_size,
            progress=progress,
        )
        inputs = {"context": context, "noise": self.noise(request, seed, latents)}
        return self.run(request, inputs, scalars, num_inference_steps, mesh)

    # ------------------------------------------------------------------ host side

    def start(
        self, prompt, negative_prompt, num_videos_per_prompt: int, guidance_scale, **settings
    ) -> tuple[jax.Array, VideoRequest, dict]:
        """`(context, request, scalars)` of a call: the prompts' embeddings, each prompt
        `num_videos_per_prompt` times (the unconditional half first under guidance), and
        `prepare`'s checked `settings`."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        use_cfg = guidance_scale > 1.0
        context, _ = self._prompt_context(
            prompts, as_list(negative_prompt, len(prompts)), num_videos_per_prompt, use_cfg
        )
        batch = context.shape[0] // (2 if use_cfg else 1)
        request, scalars = self.prepare(batch, guidance_scale=guidance_scale, **settings)
        return context, request, scalars

    def prepare(
        self,
        batch: int,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        scheduler: str | None,
        height: int | None,
        width: int | None,
        num_frames: int | None,
        latents: np.ndarray | None,
        seed: int,
        guidance_rescale: float,
        decode_chunk_size: int,
        progress: bool,
    ) -> tuple[VideoRequest, dict]:
        """Check the settings; `(request, scalars)` for `run`, where `scalars` holds the traced
        guidance, rescale, seed and step tables."""
        height, width = height or self.default_size, width or self.default_size
        check_size(height, width, self.vae_scale_factor)
        num_frames = self.default_num_frames if num_frames is None else num_frames
        max_frames = getattr(self.unet, "motion_max_seq_length", None)
        if num_frames < 1 or (max_frames and num_frames > max_frames):
            raise ValueError(
                f"num_frames={num_frames}: the motion modules take 1 to {max_frames} frames "
                "(motion_max_seq_length); generate longer videos in overlapping windows"
            )
        if decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be ≥ 1, got {decode_chunk_size}")
        sched = make_scheduler(self.scheduler_config, scheduler)
        factor = self.vae_scale_factor
        shape = (batch, num_frames, height // factor, width // factor, self.unet.in_channels)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} ([B, F, h, w, C], channels-last), "
                f"got {tuple(latents.shape)}"
            )
        request = VideoRequest(sched, guidance_scale > 1.0, shape, decode_chunk_size, progress)
        scalars = {
            "guidance": jnp.float32(guidance_scale),
            "rescale": jnp.float32(guidance_rescale),
            "tables": sched.tables(num_inference_steps, steps_bucket(num_inference_steps)),
            "seed": jnp.int32(seed),
        }
        return request, scalars

    def noise(self, request: VideoRequest, seed: int, latents: np.ndarray | None) -> jax.Array:
        """The unit Gaussian starting noise: `latents` if given, else `starting_noise(seed)`.
        Made outside the generate function, so given and drawn noise share one compilation."""
        if latents is not None:
            return jnp.asarray(latents, jnp.float32)
        return jnp.asarray(starting_noise(seed, request.shape))

    def run(
        self, request: VideoRequest, inputs: dict, scalars: dict, num_inference_steps: int, mesh
    ) -> np.ndarray | None:
        """Place `inputs` (batched) and `scalars` (replicated) on `mesh`, run the compiled
        generate function of `request` (compiled once per request), return numpy videos (inside
        `precompile`: only compile it)."""
        generate = self._compile_cached(request, partial(self._generate, request))
        inputs, scalars = place_batch(mesh, inputs), place_replicated(mesh, scalars)
        args = (self._placed_params(mesh), inputs, scalars)
        # Under the mesh, the motion UNet keeps frames split over its `frames` axis.
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            return self._launch(generate, args, num_inference_steps, request.progress)

    # ------------------------------------------------------------------ traced

    def _generate(self, request: VideoRequest, params: dict, inputs: dict, scalars: dict):
        """Noise → denoised video latents → decoded frames, traced once per request."""
        self.trace_count += 1
        scheduler, tables = request.scheduler, scalars["tables"]
        key_steps = jax.random.split(jax.random.key(scalars["seed"]))[1]
        latents = self.initial_latents(params, inputs, inputs["noise"], scheduler, tables)
        model_fn = self.guided(
            partial(self.predict_noise, params, inputs),
            request.use_cfg,
            scalars["guidance"],
            scalars["rescale"],
        )
        callback = self._progress.update if request.progress else None
        start = scalars.get("start", 0)  # the first step: > 0 for SDEdit (video-to-video)
        latents = denoise(scheduler, tables, model_fn, latents, key_steps, start, callback)
        return self.decode_video(params["vae"], latents, request.decode_chunk_size)

    def initial_latents(self, params: dict, inputs: dict, noise, scheduler, tables) -> jax.Array:
        """Hook: the latents the first step starts from, `[B,F,h,w,C]`; `noise` is unit
        Gaussian of that shape. Text-to-video: the noise at the scheduler's initial sigma."""
        del params, inputs, scheduler
        return noise * tables["init_noise_sigma"]

    def predict_noise(self, params: dict, inputs: dict, x: jax.Array, t: jax.Array) -> jax.Array:
        """Hook: the UNet's output for `x [N,F,h,w,C]` at timesteps `t [N]`; with guidance
        `N = 2B` and every batched entry of `inputs` (but the noise) is ordered
        `[unconditional; conditional]` to match."""
        return self.unet.apply(
            {"params": params["unet"]},
            x,
            t,
            inputs["context"],
            added_cond_kwargs=inputs.get("added_cond_kwargs"),
        )

    def decode_video(self, vae_params, latents: jax.Array, chunk: int) -> jax.Array:
        """Video latents `[B,F,h,w,C]` → frames `[B,F,H,W,3]` in [0,1], decoded `chunk` frames
        at a time (a `lax.map` over chunks, the last one padded), as diffusers'
        `decode_chunk_size`; the VAE treats frames independently, so chunking changes nothing."""
        batch, frames = latents.shape[:2]
        flat = latents.reshape(batch * frames, *latents.shape[2:])
        count = flat.shape[0]
        if count <= chunk:
            images = self._decode(vae_params, flat)
        else:
            flat = jnp.pad(flat, [(0, -count % chunk)] + [(0, 0)] * (flat.ndim - 1))
            chunks = flat.reshape(-1, chunk, *flat.shape[1:])
            images = jax.lax.map(partial(self._decode, vae_params), chunks)
            images = images.reshape(-1, *images.shape[2:])[:count]
        return images.reshape(batch, frames, *images.shape[1:])
