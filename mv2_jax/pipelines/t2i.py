"""Text → image with SD1.x/2.x and SDXL: prompt embeddings, one jitted denoise + decode.

Everything that changes between calls of the same shapes — prompt embeddings, guidance scale
and rescale, seed, step table, step count, first step — is a traced input, so a new prompt,
seed, guidance or step count reuses the compiled function (`trace_count` shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class TextToImagePipeline(LatentDiffusionPipeline):
    """`pipe(prompt, ...) → images [B,H,W,3]` in [0,1] (DESIGN.md, contract 3)."""

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
        num_images_per_prompt: int = 1,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        image: np.ndarray | None = None,
        strength: float = 0.8,
        progress: bool = False,
    ) -> np.ndarray:
        """Images `[B,H,W,3]` in [0,1]. Given `image [B,H,W,3]` in [0,1] this is img2img /
        SDEdit: its latents (the VAE posterior mean) are noised to step `(1 − strength)·steps`
        and denoised from there; `latents` is then the unit noise added to them."""
        if num_frames not in (None, 1):
            raise ValueError("this is a text-to-image pipeline; num_frames must be None or 1")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = as_list(negative_prompt, len(prompts))
        if image is not None:
            height, width = image.shape[1:3]
        height, width = height or self.default_size, width or self.default_size
        check_size(height, width, self.vae_scale_factor)
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        sched = make_scheduler(self.scheduler_config, scheduler)
        tables = sched.tables(num_inference_steps, steps_bucket(num_inference_steps))
        start = 0 if image is None else sched.start_index(num_inference_steps, strength)
        if start >= int(tables["num_steps"]):
            raise ValueError(
                f"strength {strength} with {num_inference_steps} steps leaves no step "
                "to run; raise strength or num_inference_steps"
            )

        use_cfg = guidance_scale > 1.0
        context, pooled = self._prompt_context(prompts, negatives, num_images_per_prompt, use_cfg)
        batch = context.shape[0] // (2 if use_cfg else 1)
        if self.text.sdxl:
            time_ids = sdxl_time_ids(
                context.shape[0],
                original_size or (height, width),
                crops_coords_top_left,
                target_size or (height, width),
            )
        added = {"text_embeds": pooled, "time_ids": time_ids} if self.text.sdxl else None

        shape = (
            batch,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
            self.unet.in_channels,
        )
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} (channels-last), got {latents.shape}"
            )
        if image is not None:
            image = jnp.broadcast_to(jnp.asarray(image, jnp.float32), (batch, height, width, 3))
        run = self._compile(sched, use_cfg, progress)
        noise = starting_noise(seed, shape) if latents is None else latents
        batched = place_batch(mesh, (context, added, jnp.asarray(noise, jnp.float32), image))
        scalars = place_replicated(
            mesh,
            (jnp.float32(guidance_scale), jnp.float32(guidance_rescale), tables, jnp.int32(seed),
             jnp.int32(start)),
        )  # fmt: skip
        args = (self._params_on(mesh), *batched, *scalars, shape)
        return self._launch(run, args, num_inference_steps, progress)

    def _compile(self, scheduler, use_cfg: bool, progress: bool):
        def generate(*args):
            return self._generate(scheduler, use_cfg, progress, *args)

        return self._compile_cached((scheduler, use_cfg, progress), generate, static_argnums=(10,))

    def _generate(self, scheduler, use_cfg, progress, params, context, added, noise, image,
                  guidance, rescale, tables, seed, start, shape):  # fmt: skip
        """Noise (or a noised image) → denoised latents → decoded images, traced once per
        static configuration."""
        self.trace_count += 1
        unet_params, vae_params = params
        key_steps = jax.random.split(jax.random.key(seed))[1]  # stochastic samplers' noise
        if image is None:
            latents = noise * tables["init_noise_sigma"]
        else:
            latents = scheduler.add_noise(tables, self._encode(vae_params, image), noise, start)

        def predict(x, t):
            return self.unet.apply({"params": unet_params}, x, t, context, added_cond_kwargs=added)

        model_fn = self.guided(predict, use_cfg, guidance, rescale)
        callback = self._progress.update if progress else None
        latents = denoise(scheduler, tables, model_fn, latents, key_steps, start, callback)
        return self._decode(vae_params, latents)


def sdxl_time_ids(batch: int, original_size, crop_top_left, target_size) -> jax.Array:
    """SDXL's micro-conditioning `[B, 6]`: original size, crop corner and target size, each
    (height, width), as the UNet's `added_cond_kwargs["time_ids"]` (Podell et al. 2023, §2.2)."""
    row = (*original_size, *crop_top_left, *target_size)
    return jnp.tile(jnp.asarray([row], jnp.float32), (batch, 1))
