"""Text → image with SD1.x/2.x and SDXL: the single-frame case of the pipeline template
(`mv2_jax.pipelines.base`), plus SDXL's micro-conditioning and img2img.

Everything that changes between calls of the same shapes — prompt embeddings, guidance scale
and rescale, seed, step table, step count, first step — is a traced input, so a new prompt,
seed, guidance, step count or strength reuses the compiled program (`trace_count` shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.pipelines.base import LatentDiffusionPipeline
from mv2_jax.pipelines.defaults import STAGE_DEFAULTS
from mv2_jax.pipelines.request import Prepared, SamplingRequest, check_unit_interval, from_arguments


@dataclass(frozen=True, kw_only=True, eq=False)
class ImageRequest(SamplingRequest):
    """`SamplingRequest` plus img2img (`image [B,H,W,3]` in [0,1], `strength`) and SDXL's
    micro-conditioning sizes (`(height, width)` each; None: the output size)."""

    image: np.ndarray | None = None
    strength: float = 0.8
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.num_frames not in (None, 1):
            raise ValueError("this is a text-to-image pipeline; num_frames must be None or 1")
        if self.image is not None:
            check_unit_interval(self.strength, "strength", open_below=True)


@dataclass
class TextToImagePipeline(LatentDiffusionPipeline):
    """`pipe(prompt, ...) → images [B,H,W,3]` in [0,1] (DESIGN.md, contract 3).

    An LCM-distilled UNet (config `time_cond_proj_dim`: LCM_Dreamshaper_v7, lcm-sdxl) is run
    as diffusers' StableDiffusion(XL) and LatentConsistencyModel pipelines run it: its guidance
    scale goes in as `timestep_cond` and there is no negative branch (`guidance_embedded`)."""

    embeds_guidance = True

    def request(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        *,
        num_inference_steps: int = STAGE_DEFAULTS["t2i"].steps,
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
        decode_chunk_size: int = 16,
        vae_tile_size: int | None = None,
        progress: bool = False,
        guidance_batching: str = "auto",
    ) -> ImageRequest:
        """Images `[B,H,W,3]` in [0,1]. Given `image [B,H,W,3]` in [0,1] this is img2img /
        SDEdit: its latents (the VAE posterior mean) are noised to step `(1 − strength)·steps`
        and denoised from there; `latents` is then the unit noise added to them."""
        return from_arguments(ImageRequest, locals())

    def output_size(self, request: ImageRequest) -> tuple[int, int]:
        if request.image is not None:
            return tuple(np.shape(request.image)[1:3])
        return super().output_size(request)

    def condition(self, request: ImageRequest, prepared: Prepared, pooled) -> Prepared:
        """SDXL's pooled embeddings and size conditioning; img2img's image and first step."""
        batch, height, width = prepared.program.shape[0], *self.output_size(request)
        if self.text.sdxl:
            time_ids = sdxl_time_ids(
                pooled.shape[0],
                request.original_size or (height, width),
                request.crops_coords_top_left,
                request.target_size or (height, width),
            )
            added = {"text_embeds": pooled, "time_ids": time_ids}
            prepared = prepared.adding({"sdxl": True}, {"added_cond_kwargs": added})
        if request.image is None:
            return prepared
        image = np.broadcast_to(np.asarray(request.image, np.float32), (batch, height, width, 3))
        prepared = prepared.adding(inputs={"image": image})
        return self.starting_step(prepared, request.strength, request.num_inference_steps)

    def conditions(self, program, params, inputs, scalars) -> dict:
        if not program.init_latents:
            return {}
        latents = self.encode_images(
            params["vae"], inputs["image"], program.decode_chunk_size, program.vae_tile_size
        )
        return {"init_latents": latents}


def sdxl_time_ids(batch: int, original_size, crop_top_left, target_size) -> jax.Array:
    """SDXL's micro-conditioning `[B, 6]`: original size, crop corner and target size, each
    (height, width), as the UNet's `added_cond_kwargs["time_ids"]` (Podell et al. 2023, §2.2)."""
    row = (*original_size, *crop_top_left, *target_size)
    return jnp.tile(jnp.asarray([row], jnp.float32), (batch, 1))
