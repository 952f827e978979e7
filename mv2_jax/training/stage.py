"""The bases of the trainer's stages. `BaseStage` holds what every stage has; `FreshModelStage`
is the base of the stages whose small models start fresh from the config (vae, clip, vfi);
`LatentDiffusionStage` the base of those that start from a pipeline folder (t2i, i2v, v2v): the
frozen VAE and text encoders, tokenising on the host, caption dropout, and the denoising loss.

What the trainer asks of a stage is `mv2_jax.training.stage_contract.TrainingStage`; every
attribute is set when a stage is constructed (`from_config`), none filled in afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.dtypes import parse_dtype
from mv2_jax.parallel.sharding import module_shardings_for
from mv2_jax.pipelines.loading import read_model_index
from mv2_jax.pipelines.text import load_tokenizer, prompt_embeddings
from mv2_jax.training import losses
from mv2_jax.training.config_data import data_iterator
from mv2_jax.weights.load import load_component


def dtype_of(name: str):
    """A config's dtype name ("float32", "bfloat16", "bf16", …) as a dtype (`parse_dtype`)."""
    return parse_dtype(name)


def key_streams(keys: jax.Array, count: int) -> tuple[jax.Array, ...]:
    """`count` independent keys `[B]` per example key (`fold_in(key, i)`, i < count)."""
    return tuple(jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys) for i in range(count))


def module_param_shapes(module, dtype=None) -> dict:
    """The param tree of a component model as `jax.ShapeDtypeStruct`s (nothing computed),
    stored in `dtype` (None: the module's own)."""
    from mv2_jax.weights.registry import family_of, param_shapes

    shapes = param_shapes(module, family_of(module))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype), shapes)


@dataclass(kw_only=True)
class BaseStage:
    """What every stage holds, given as keywords at construction."""

    param_dtype: Any  # storage dtype of the params that train
    seed: int  # config.seed: fresh params and new layers are drawn from it
    consts: dict = field(default_factory=dict)  # frozen arrays the loss reads

    def trainable_patterns(self, patterns) -> tuple[str, ...]:
        """The `config.trainable` globs this stage uses: all of them."""
        return tuple(patterns)


@dataclass(kw_only=True)
class FreshModelStage(BaseStage):
    """The params of a stage whose small models are built from the config and start fresh
    (the VAE, CLIP and VFI stages): the stage writes `_init(key)` (the whole param tree of a
    key); params are replicated (the models are small; the batch is what spreads over the
    devices). Each such stage says itself where its data comes from (`uses_config_data`)."""

    needs_pipeline: ClassVar[bool] = False
    shapes: dict = field(init=False, repr=False)  # the param tree, traced once at construction

    def __post_init__(self) -> None:
        # The trainer asks for the shapes more than once; tracing `_init` takes seconds.
        traced = jax.eval_shape(self._init, jax.random.key(0, impl="rbg"))
        self.shapes = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, self.param_dtype), traced
        )

    def _init(self, key: jax.Array) -> dict:
        raise NotImplementedError

    def param_shapes(self) -> dict:
        return self.shapes

    def param_shardings(self, mesh, rules) -> dict:
        replicated = NamedSharding(mesh, PartitionSpec())
        return jax.tree.map(lambda _: replicated, self.param_shapes())

    def load_params(self, shardings=None) -> dict:
        """Fresh params from the stage's `seed`, placed on `shardings`."""
        # rbg: XLA:CPU compiles a threefry init of many params slowly.
        key = jax.random.key(self.seed, impl="rbg")
        params = jax.jit(self._init, out_shardings=shardings)(key)
        return jax.tree.map(lambda p: p.astype(self.param_dtype), params)


def caption_token_ids(tokenizers, captions) -> np.ndarray:
    """`[B, n_encoders, L]` int32 token ids of the captions, for every tokenizer."""
    ids = []
    for tokenizer in tokenizers:
        tokens = tokenizer(
            [str(c) for c in captions],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="np",
        )
        ids.append(np.asarray(tokens["input_ids"], np.int32))
    return np.stack(ids, axis=1)


def encode_token_ids(text_encoders, text_params, ids):
    """Token ids `[B, n_encoders, L]` → (context `[B,L,D]`, pooled `[B,P]` or None)."""
    outputs = [
        module.apply({"params": p}, ids[:, i], output_hidden_states=True)
        for i, (module, p) in enumerate(zip(text_encoders, text_params))
    ]
    return prompt_embeddings(outputs)


@dataclass
class LatentDiffusionStage(BaseStage):
    """A stage that denoises in the latent space of a pipeline folder's VAE, conditioned on its
    text encoders (both frozen; their params and ᾱ, the empty prompt's token ids and embeddings
    are the `consts`), trained on `config.data`. A subclass adds the model that trains."""

    needs_pipeline: ClassVar[bool] = True
    uses_config_data: ClassVar[bool] = True

    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    prediction_type: str
    diffusion: Any  # the config's `diffusion` section
    sdxl: bool

    @classmethod
    def from_pipeline(cls, config, pipeline: Path, mesh, **fields):
        """The stage with the frozen encoders of the `pipeline` folder (replicated over `mesh`:
        every process holds them whole) and the subclass's own `fields`."""
        index = read_model_index(pipeline)
        sdxl = bool(index.get("text_encoder_2") and index["text_encoder_2"][0])
        suffixes = ("", "_2") if sdxl else ("",)
        tokenizers = tuple(load_tokenizer(pipeline / f"tokenizer{s}") for s in suffixes)
        replicated = NamedSharding(mesh, PartitionSpec())
        encoders = [
            load_component(pipeline / f"text_encoder{s}", shardings=replicated) for s in suffixes
        ]
        text_encoders = tuple(module for module, _ in encoders)
        text_params = tuple(params for _, params in encoders)
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
        empty_ids = jnp.asarray(caption_token_ids(tokenizers, [""])[0])
        # The empty prompt's embeddings, for caption dropout on precomputed embeddings: once
        # here rather than a text-encoder pass in every step.
        empty_context, empty_pooled = encode_token_ids(text_encoders, text_params, empty_ids[None])
        consts = {
            "vae": vae_params,
            "text": text_params,
            "alphas_cumprod": jnp.asarray(scheduler.train_alphas_cumprod()),
            "empty_ids": empty_ids,
            "empty_context": empty_context,
        }
        if empty_pooled is not None:
            consts["empty_pooled"] = empty_pooled
        return cls(
            param_dtype=dtype_of(config.param_dtype),
            seed=config.seed,
            consts=consts,
            vae=vae,
            text_encoders=text_encoders,
            tokenizers=tokenizers,
            prediction_type=prediction_type,
            diffusion=config.diffusion,
            sdxl=sdxl,
            **fields,
        )

    def make_data_iterator(self, config) -> Iterator[dict]:
        """The batches of the run's `config.data`."""
        return data_iterator(config)

    # ---- the params that train (a single denoiser here; stages with more override these)

    def param_shapes(self) -> dict:
        return module_param_shapes(self.denoiser, self.param_dtype)

    def param_shardings(self, mesh, rules) -> dict:
        return module_shardings_for(self.denoiser, mesh, rules)

    # ---- host side

    def token_ids(self, captions) -> np.ndarray:
        """`[B, n_encoders, L]` int32 token ids of the captions, for every text encoder."""
        return caption_token_ids(self.tokenizers, captions)

    def prepare_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The data pipeline's `[B,F,H,W,3]` pixels → what this stage's loss takes."""
        return pixels

    def prepare(self, batch: dict) -> dict:
        """The data pipeline's batch → arrays: `pixels` (see `prepare_pixels`) and token ids, or
        the precomputed `latents` / `context` (and `pooled`) as they are."""
        out = {}
        if "pixels" in batch:
            out["pixels"] = self.prepare_pixels(np.asarray(batch["pixels"], np.float32))
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
        return encode_token_ids(self.text_encoders, text_params, ids)

    def encode_pixels(self, vae_params, pixels, keys):
        """Pixels `[B,H,W,3]` or `[B,F,H,W,3]` in [-1, 1] → a sample of q(z|x) per example key
        (all of a clip's frames from its key), scaled: `[B,h,w,c]` or `[B,F,h,w,c]`."""
        lead = pixels.shape[: pixels.ndim - 3]
        folded = pixels.reshape(-1, *pixels.shape[-3:])
        posterior = self.vae.apply({"params": vae_params}, folded, method="encode")
        mean = posterior.mean.reshape(*lead, *posterior.mean.shape[1:])
        std = posterior.std.reshape(mean.shape)
        noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], jnp.float32))(keys)
        return self.vae.to_diffusion_latents(mean + std * noise)

    def encode_for_precompute(self, consts, batch) -> dict:
        """What `mv2_jax.data.precompute` stores per example: the posterior mean's latents
        `[B,F,h,w,c]` (deterministic; F = 1 for images) and the caption embeddings."""
        pixels = batch["pixels"]
        clips = pixels if pixels.ndim == 5 else pixels[:, None]
        folded = clips.reshape(-1, *clips.shape[2:])
        posterior = self.vae.apply({"params": consts["vae"]}, folded, method="encode")
        latents = self.vae.to_diffusion_latents(posterior.mean)
        context, pooled = self.encode_text(consts["text"], batch["input_ids"])
        out = {"latents": latents.reshape(*clips.shape[:2], *latents.shape[1:]), "context": context}
        if pooled is not None:
            out["pooled"] = pooled
        return out

    def clean_latents(self, consts, batch, keys) -> jax.Array:
        """The batch's precomputed latents, else its pixels through the VAE."""
        if "latents" in batch:
            return batch["latents"]
        return self.encode_pixels(consts["vae"], batch["pixels"], keys)

    def text_context(self, consts, batch, keys) -> tuple[jax.Array, jax.Array | None]:
        """(context `[B,L,D]`, pooled or None) of the captions, each replaced by the empty
        prompt with probability `diffusion.caption_dropout` (for classifier-free guidance)."""
        drop = jax.vmap(lambda k: jax.random.bernoulli(k, self.diffusion.caption_dropout))(keys)
        if "context" in batch:
            context = jnp.where(drop[:, None, None], consts["empty_context"], batch["context"])
            pooled = batch.get("pooled")
            if pooled is not None:
                pooled = jnp.where(drop[:, None], consts["empty_pooled"], pooled)
            return context, pooled
        ids = jnp.where(drop[:, None, None], consts["empty_ids"][None], batch["input_ids"])
        return self.encode_text(consts["text"], ids)

    def denoising_loss(
        self,
        consts,
        latents: jax.Array,
        time_keys: jax.Array,
        noise_keys: jax.Array,
        predict: Callable[[jax.Array, jax.Array], jax.Array],
    ) -> tuple[jax.Array, dict]:
        """Min-SNR-weighted MSE of `predict(noisy, timesteps)` to the configured target, the
        clean `latents` (`[B, ...]`) noised at one random timestep per example."""
        d = self.diffusion
        alphas_cumprod = consts["alphas_cumprod"]
        timesteps = losses.per_example_timesteps(time_keys, alphas_cumprod.shape[0])
        noise = losses.per_example_noise(noise_keys, latents.shape[1:], d.offset_noise)
        noisy, target = losses.noisy_and_target(
            latents, noise, timesteps, alphas_cumprod, self.prediction_type
        )
        prediction = predict(noisy, timesteps)
        weights = losses.min_snr_weights(
            alphas_cumprod, timesteps, d.min_snr_gamma, self.prediction_type
        )
        loss = losses.weighted_mse(prediction, target, weights)
        return loss, {"loss": loss}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)
