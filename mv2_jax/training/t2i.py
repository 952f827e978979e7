"""The text-to-image stage for the trainer: the UNet to train and its denoising loss; the frozen
VAE and text encoders, tokenising, caption dropout and the loss itself are shared with the other
stages (`mv2_jax.training.stage`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mv2_jax.models.remat import check_remat_policy
from mv2_jax.pipelines.t2i import sdxl_time_ids
from mv2_jax.training.stage import LatentDiffusionStage, dtype_of, key_streams
from mv2_jax.weights.load import build_module, load_component, read_config


@dataclass
class TextToImageStage(LatentDiffusionStage):
    denoiser: Any  # UNet2DConditionModel, compute dtype and remat policy of the config
    unet_folder: Path

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None) -> TextToImageStage:
        """The stage of `config` starting from the `pipeline` folder; the frozen encoders'
        params are replicated over `mesh` (every process holds them whole)."""
        unet_folder = pipeline / "unet"
        param_dtype = dtype_of(config.param_dtype)
        unet, _ = build_module(read_config(unet_folder), param_dtype, where=str(unet_folder))
        denoiser = unet.clone(
            dtype=dtype_of(config.compute_dtype),
            remat_policy=check_remat_policy(config.remat_policy),
        )
        return cls.from_pipeline(config, pipeline, mesh, denoiser=denoiser, unet_folder=unet_folder)

    def load_params(self, shardings=None) -> dict:
        """The UNet's params from the pipeline folder, each placed on its shards."""
        return load_component(self.unet_folder, self.param_dtype, shardings)[1]

    def prepare_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """`[B,1,H,W,3]` → `[B,H,W,3]`: this stage trains on images."""
        if pixels.ndim == 5:
            if pixels.shape[1] != 1:
                raise ValueError(
                    f"the t2i stage trains on images; got {pixels.shape[1]}-frame clips "
                    "(set data.num_frames=1)"
                )
            pixels = pixels[:, 0]
        return pixels

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """Min-SNR-weighted denoising loss of one (micro-)batch, one PRNG key per example."""
        k_vae, k_drop, k_time, k_noise = key_streams(keys, 4)
        latents = self.clean_latents(consts, batch, k_vae)
        if latents.ndim == 5:  # precomputed `[B,1,h,w,c]`
            latents = latents[:, 0]
        context, pooled = self.text_context(consts, batch, k_drop)
        predict = self.predictor(params, latents, context, pooled)
        return self.denoising_loss(consts, latents, k_time, k_noise, predict)

    def predictor(
        self, params, latents, context, pooled=None
    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """`predict(noisy, timesteps)` of the UNet for `latents` `[B,h,w,c]` and their text
        (`context` `[B,L,D]`; SDXL: `pooled` `[B,P]` and the micro-conditioning of the
        latents' size)."""
        added = None
        if self.sdxl:
            b, h, w = latents.shape[:3]
            size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
            added = {"text_embeds": pooled, "time_ids": sdxl_time_ids(b, size, (0, 0), size)}

        def predict(noisy, timesteps):
            return self.denoiser.apply(
                {"params": params}, noisy, timesteps, context, added_cond_kwargs=added
            )

        return predict

    def example_batch(self, batch_size: int, height: int, width: int) -> dict:
        """Shapes of one prepared batch (numpy zeros), for tracing the step ahead of data."""
        n, length = len(self.tokenizers), self.tokenizers[0].model_max_length
        return {
            "pixels": np.zeros((batch_size, height, width, 3), np.float32),
            "input_ids": np.zeros((batch_size, n, length), np.int32),
        }
