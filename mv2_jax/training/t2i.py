"""The text-to-image stage for the trainer: the UNet to train, its frozen VAE and text
encoders, host-side batch preparation (tokenising captions) and the denoising loss.

A stage gives the generic trainer (`mv2_jax.training.trainer`) four things: `denoiser` (the
module whose params train), `load_params(shardings)`, `consts` (frozen arrays the loss reads)
and `loss(params, consts, batch, keys)`; `prepare(batch)` turns the data pipeline's numpy
batch into arrays. Later stages (I2V, V2V) supply the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.models.remat import check_remat_policy
from mv2_jax.pipelines.loading import read_model_index
from mv2_jax.pipelines.t2i import sdxl_time_ids
from mv2_jax.pipelines.text import load_tokenizer, prompt_embeddings
from mv2_jax.training import losses
from mv2_jax.weights.load import build_module, load_component, read_config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass
class TextToImageStage:
    denoiser: Any  # UNet2DConditionModel, compute dtype and remat policy of the config
    unet_folder: Path
    param_dtype: Any
    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    consts: dict  # vae / text params, ᾱ, the empty prompt's token ids
    prediction_type: str
    diffusion: Any  # the config's `diffusion` section
    sdxl: bool

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh) -> TextToImageStage:
        """The stage of `config` starting from the `pipeline` folder; the frozen encoders'
        params are replicated over `mesh` (every process holds them whole)."""
        index = read_model_index(pipeline)
        sdxl = bool(index.get("text_encoder_2") and index["text_encoder_2"][0])
        suffixes = ("", "_2") if sdxl else ("",)
        tokenizers = tuple(load_tokenizer(pipeline / f"tokenizer{s}") for s in suffixes)
        replicated = NamedSharding(mesh, PartitionSpec())
        encoders = [
            load_component(pipeline / f"text_encoder{s}", shardings=replicated) for s in suffixes
        ]
        vae, vae_params = load_component(pipeline / "vae", shardings=replicated)
        scheduler = make_scheduler(
            json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text()), "ddpm"
        )
        prediction_type = config.diffusion.prediction_type or scheduler.config["prediction_type"]
        if prediction_type not in losses.PREDICTION_TYPES:
            raise ValueError(
                f"diffusion.prediction_type={prediction_type!r}; "
                f"choose one of {losses.PREDICTION_TYPES} (or '' for the scheduler's)"
            )
        unet_folder = pipeline / "unet"
        param_dtype = dtype_of(config.param_dtype)
        unet, _ = build_module(read_config(unet_folder), param_dtype, where=str(unet_folder))
        denoiser = unet.clone(
            dtype=dtype_of(config.compute_dtype),
            remat_policy=check_remat_policy(config.remat_policy),
        )
        stage = cls(
            denoiser=denoiser,
            unet_folder=unet_folder,
            param_dtype=param_dtype,
            vae=vae,
            text_encoders=tuple(module for module, _ in encoders),
            tokenizers=tokenizers,
            consts={},
            prediction_type=prediction_type,
            diffusion=config.diffusion,
            sdxl=sdxl,
        )
        stage.consts = {
            "vae": vae_params,
            "text": tuple(params for _, params in encoders),
            "alphas_cumprod": jnp.asarray(scheduler.train_alphas_cumprod()),
            "empty_ids": jnp.asarray(stage.token_ids([""])[0]),
        }
        # The empty prompt's embeddings, for caption dropout on precomputed embeddings: once
        # here rather than a text-encoder pass in every step.
        empty_context, empty_pooled = stage.encode_text(
            stage.consts["text"], stage.consts["empty_ids"][None]
        )
        stage.consts["empty_context"] = empty_context
        if empty_pooled is not None:
            stage.consts["empty_pooled"] = empty_pooled
        return stage

    def load_params(self, shardings=None) -> dict:
        """The UNet's params from the pipeline folder, each placed on its shards."""
        return load_component(self.unet_folder, self.param_dtype, shardings)[1]

    # ---- host side

    def token_ids(self, captions) -> np.ndarray:
        """`[B, n_encoders, L]` int32 token ids of the captions, for every text encoder."""
        ids = []
        for tokenizer in self.tokenizers:
            tokens = tokenizer(
                [str(c) for c in captions],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="np",
            )
            ids.append(np.asarray(tokens["input_ids"], np.int32))
        return np.stack(ids, axis=1)

    def prepare(self, batch: dict) -> dict:
        """The data pipeline's batch → arrays: pixels `[B,H,W,3]` (frame 0 of `[B,1,H,W,3]`) and
        token ids, or the precomputed `latents` / `context` (and `pooled`) as they are."""
        out = {}
        if "pixels" in batch:
            pixels = np.asarray(batch["pixels"], np.float32)
            if pixels.ndim == 5:
                if pixels.shape[1] != 1:
                    raise ValueError(
                        f"the t2i stage trains on images; got {pixels.shape[1]}-frame clips "
                        "(set data.num_frames=1)"
                    )
                pixels = pixels[:, 0]
            out["pixels"] = pixels
        for key in ("latents", "context", "pooled"):
            if key in batch:
                out[key] = np.asarray(batch[key], np.float32)
        if "context" not in out:
            out["input_ids"] = self.token_ids(batch["caption"])
        if "position" in batch:  # names each example's noise (mv2_jax.training.step)
            out["position"] = np.asarray(batch["position"], np.int64).astype(np.uint32)
        return out

    # ---- device side (inside the jitted step)

    def encode_text(self, text_params, ids):
        """Token ids `[B, n_encoders, L]` → (context `[B,L,D]`, pooled `[B,P]` or None)."""
        outputs = [
            module.apply({"params": p}, ids[:, i], output_hidden_states=True)
            for i, (module, p) in enumerate(zip(self.text_encoders, text_params))
        ]
        return prompt_embeddings(outputs)

    def encode_pixels(self, vae_params, pixels, keys):
        """Pixels `[B,H,W,3]` in [-1, 1] → a sample of q(z|x) per example key, scaled."""
        posterior = self.vae.apply({"params": vae_params}, pixels, method="encode")
        noise = jax.vmap(lambda k, m: jax.random.normal(k, m.shape, jnp.float32))(
            keys, posterior.mean
        )
        return self.vae.to_diffusion_latents(posterior.mean + posterior.std * noise)

    def encode_for_precompute(self, consts, batch) -> dict:
        """What `mv2_jax.data.precompute` stores per example: the posterior mean's latents
        `[B,1,h,w,c]` (deterministic) and the caption embeddings."""
        posterior = self.vae.apply({"params": consts["vae"]}, batch["pixels"], method="encode")
        context, pooled = self.encode_text(consts["text"], batch["input_ids"])
        latents = self.vae.to_diffusion_latents(posterior.mean)[:, None]
        out = {"latents": latents, "context": context}
        if pooled is not None:
            out["pooled"] = pooled
        return out

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """Min-SNR-weighted denoising loss of one (micro-)batch, one PRNG key per example."""
        k_vae, k_drop, k_time, k_noise = (
            jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys) for i in range(4)
        )
        d = self.diffusion
        if "latents" in batch:
            latents = batch["latents"][:, 0]
        else:
            latents = self.encode_pixels(consts["vae"], batch["pixels"], k_vae)
        drop = jax.vmap(lambda k: jax.random.bernoulli(k, d.caption_dropout))(k_drop)
        if "context" in batch:
            context = jnp.where(drop[:, None, None], consts["empty_context"], batch["context"])
            pooled = batch.get("pooled")
            if pooled is not None:
                pooled = jnp.where(drop[:, None], consts["empty_pooled"], pooled)
        else:
            ids = jnp.where(drop[:, None, None], consts["empty_ids"][None], batch["input_ids"])
            context, pooled = self.encode_text(consts["text"], ids)
        added = None
        if self.sdxl:
            b, h, w = latents.shape[:3]
            size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
            added = {"text_embeds": pooled, "time_ids": sdxl_time_ids(b, size, (0, 0), size)}

        alphas_cumprod = consts["alphas_cumprod"]
        timesteps = losses.per_example_timesteps(k_time, alphas_cumprod.shape[0])
        noise = losses.per_example_noise(k_noise, latents.shape[1:], d.offset_noise)
        noisy, target = losses.noisy_and_target(
            latents, noise, timesteps, alphas_cumprod, self.prediction_type
        )
        prediction = self.denoiser.apply(
            {"params": params}, noisy, timesteps, context, added_cond_kwargs=added
        )
        weights = losses.min_snr_weights(
            alphas_cumprod, timesteps, d.min_snr_gamma, self.prediction_type
        )
        loss = losses.weighted_mse(prediction, target, weights)
        return loss, {"loss": loss}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    def example_batch(self, batch_size: int, height: int, width: int) -> dict:
        """Shapes of one prepared batch (numpy zeros), for tracing the step ahead of data."""
        n, length = len(self.tokenizers), self.tokenizers[0].model_max_length
        return {
            "pixels": np.zeros((batch_size, height, width, 3), np.float32),
            "input_ids": np.zeros((batch_size, n, length), np.int32),
        }
