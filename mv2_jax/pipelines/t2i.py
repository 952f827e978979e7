"""Text → image with SD1.x/2.x and SDXL: prompt embeddings, one jitted denoise + decode.

Everything that changes between calls of the same shapes — prompt embeddings, guidance scale
and rescale, seed, step table, step count, first step — is a traced input, so a new prompt,
seed, guidance or step count reuses the compiled function (`trace_count` shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.diffusion.guidance import classifier_free_guidance
from mv2_jax.diffusion.sampler import denoise, steps_bucket
from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.parallel.sharding import batch_sharding, module_shardings_for, shard_params
from mv2_jax.pipelines.progress import StepProgress
from mv2_jax.pipelines.text import PromptEncoder


@dataclass
class TextToImagePipeline:
    """`pipe(prompt, ...) → images [B,H,W,3]` in [0,1] (DESIGN.md, contract 3)."""

    unet: Any
    unet_params: Any
    vae: Any
    vae_params: Any
    text: PromptEncoder
    scheduler_config: dict
    default_guidance_scale: float = 7.5
    unet_sample_size: int = 64
    trace_count: int = 0
    _compiled: dict = field(default_factory=dict, repr=False)
    _placements: dict = field(default_factory=dict, repr=False)
    _progress: StepProgress = field(default_factory=StepProgress, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.unet_sample_size * self.vae_scale_factor

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
        negatives = _as_list(negative_prompt, len(prompts))
        if image is not None:
            height, width = image.shape[1:3]
        height, width = height or self.default_size, width or self.default_size
        _check_size(height, width, self.vae_scale_factor)
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
        cond = self.text.encode(prompts)
        context, pooled = _repeat(cond, num_images_per_prompt)
        batch = context.shape[0]
        if self.text.sdxl:
            time_ids = sdxl_time_ids(
                batch,
                original_size or (height, width),
                crops_coords_top_left,
                target_size or (height, width),
            )
        if use_cfg:
            uncond, uncond_pooled = _repeat(
                self.text.encode_negative(negatives, cond), num_images_per_prompt
            )
            context = jnp.concatenate([uncond, context])
            if pooled is not None:
                pooled = jnp.concatenate([uncond_pooled, pooled])
                time_ids = jnp.concatenate([time_ids, time_ids])
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
        batched = _place_batch(
            mesh, (context, added, None if latents is None else jnp.asarray(latents), image)
        )
        scalars = _place_replicated(
            mesh,
            (jnp.float32(guidance_scale), jnp.float32(guidance_rescale), tables, jnp.int32(seed),
             jnp.int32(start)),
        )  # fmt: skip
        with self._progress.bar(num_inference_steps, enabled=progress):
            images = run(self._params_on(mesh), *batched, *scalars, shape)
            return np.asarray(images)  # waits for the last step inside the bar

    def _params_on(self, mesh):
        """UNet and VAE params, placed on `mesh` by the logical-axis rules (once per mesh)."""
        if mesh is None:
            return self.unet_params, self.vae_params
        if mesh not in self._placements:
            self._placements[mesh] = tuple(
                shard_params(params, module_shardings_for(module, mesh))
                for module, params in ((self.unet, self.unet_params), (self.vae, self.vae_params))
            )
        return self._placements[mesh]

    def _compile(self, scheduler, use_cfg: bool, progress: bool):
        key = (scheduler, use_cfg, progress)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(
                lambda *a: self._generate(scheduler, use_cfg, progress, *a), static_argnums=(10,)
            )
        return self._compiled[key]

    def _generate(self, scheduler, use_cfg, progress, params, context, added, noise, image,
                  guidance, rescale, tables, seed, start, shape):  # fmt: skip
        """Noise (or a noised image) → denoised latents → decoded images, traced once per
        static configuration."""
        self.trace_count += 1
        unet_params, vae_params = params
        key_latents, key_steps = jax.random.split(jax.random.key(seed))
        if noise is None:
            noise = jax.random.normal(key_latents, shape, jnp.float32)
        if image is None:
            latents = noise * tables["init_noise_sigma"]
        else:
            latents = scheduler.add_noise(tables, self._encode(vae_params, image), noise, start)

        def model_fn(x, t):
            x = jnp.concatenate([x, x]) if use_cfg else x
            t = jnp.broadcast_to(t, (x.shape[0],))
            out = self.unet.apply({"params": unet_params}, x, t, context, added_cond_kwargs=added)
            if not use_cfg:
                return out
            uncond, cond = jnp.split(out, 2)
            return classifier_free_guidance(uncond, cond, guidance, rescale)

        callback = self._progress.update if progress else None
        latents = denoise(scheduler, tables, model_fn, latents, key_steps, start, callback)
        return self._decode(vae_params, latents)

    def _encode(self, vae_params, image):
        latents = self.vae.apply({"params": vae_params}, 2 * image - 1, method="encode").mode()
        return self.vae.to_diffusion_latents(latents)

    def _decode(self, vae_params, latents):
        vae = self.vae
        latents = vae.from_diffusion_latents(latents)
        images = vae.apply({"params": vae_params}, latents, method="decode")
        return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


def sdxl_time_ids(batch: int, original_size, crop_top_left, target_size) -> jax.Array:
    """SDXL's micro-conditioning `[B, 6]`: original size, crop corner and target size, each
    (height, width), as the UNet's `added_cond_kwargs["time_ids"]` (Podell et al. 2023, §2.2)."""
    row = (*original_size, *crop_top_left, *target_size)
    return jnp.tile(jnp.asarray([row], jnp.float32), (batch, 1))


def _as_list(value, n: int) -> list[str] | None:
    if value is None:
        return None
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} negative prompts for {n} prompts")
    return values


def _repeat(pair, times: int):
    """Each prompt's embeddings `times` times in a row (diffusers' num_images_per_prompt)."""
    return tuple(None if x is None else jnp.repeat(x, times, axis=0) for x in pair)


def _place_batch(mesh, tree):
    """Inputs with a leading batch axis: split over the mesh's data × fsdp axes."""
    if mesh is None:
        return tree
    return jax.tree.map(
        lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim, shape=x.shape)), tree
    )


def _place_replicated(mesh, tree):
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _check_size(height: int, width: int, factor: int) -> None:
    multiple = max(8, factor)
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple}; got {height}×{width}")
