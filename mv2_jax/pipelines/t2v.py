"""Text → video with an AnimateDiff-style motion UNet: the pipeline template
(`mv2_jax.pipelines.base`) on video latents `[B,F,h,w,C]`, the VAE decoding the frames in chunks.

Prompt embeddings, guidance scale and rescale, seed and step table are traced inputs, so a new
prompt, seed, guidance or step count reuses the compiled program (`trace_count` shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from mv2_jax.pipelines.base import LatentDiffusionPipeline
from mv2_jax.pipelines.defaults import STAGE_DEFAULTS
from mv2_jax.pipelines.request import SamplingRequest, from_arguments


@dataclass
class TextToVideoPipeline(LatentDiffusionPipeline):
    """`pipe(prompt, ...) → videos [B,F,H,W,3]` in [0,1] (DESIGN.md, contract 3).

    As diffusers' AnimateDiffPipeline, a motion UNet with `time_cond_proj_dim` gets no
    `timestep_cond` and is guided as usual (`embeds_guidance` is False): AnimateLCM's weights
    carry their distilled guidance in the LoRA, not in an embedding."""

    default_num_frames: int = STAGE_DEFAULTS["t2v"].num_frames

    def request(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        *,
        num_inference_steps: int = STAGE_DEFAULTS["t2v"].steps,
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
        vae_tile_size: int | None = None,
        progress: bool = False,
        guidance_batching: str = "auto",
    ) -> SamplingRequest:
        """Videos `[B·num_videos_per_prompt, F, H, W, 3]` in [0,1]. `latents`, if given, are
        channels-last unit Gaussian noise `[B, F, h, w, C]` (scaled here by the scheduler's
        initial sigma, as diffusers does). The VAE decodes `decode_chunk_size` frames (× B) at
        a time, so long videos need memory for one chunk of full-size frames only."""
        return from_arguments(SamplingRequest, locals())

    def frame_count(self, request: SamplingRequest) -> int:
        """The request's frames (default: `default_num_frames`), within what the motion
        modules take."""
        frames = self.default_num_frames if request.num_frames is None else request.num_frames
        max_frames = self.unet.motion_max_seq_length
        if frames < 1 or (max_frames and frames > max_frames):
            raise ValueError(
                f"num_frames={frames}: the motion modules take 1 to {max_frames} frames "
                "(motion_max_seq_length); generate longer videos in overlapping windows"
            )
        return frames
