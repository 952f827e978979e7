"""Reward-gradient tuning for the trainer (`config.stage = "reward_gradient"`, configs/reward.py):
sample with the scan sampler from the model being tuned, decode (a window of) the frames and
ascend a differentiable reward of them, backpropagating through the last K sampling steps only —
DRaFT-K (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards",
§4.1) for the T2I UNet, VADER (Prabhudesai et al. 2024, "Video Diffusion Alignment via Reward
Gradients", §3) for the I2V motion UNet, where a random window of frames is decoded to bound
memory. A LoRA by default (`config.model.lora`, `mv2_jax.training.lora` wraps this stage).

loss = −reward_scale · mean_b R(decode(x₀ᵇ), c_b), x₀ = sampler(θ; x_T, c) with ∂x₀/∂θ kept only
through the last K steps (`mv2_jax.diffusion.sampler.denoise_with_last_steps_differentiable`:
earlier steps under `stop_gradient`, the last K under `jax.checkpoint`).

R is a trained reward model (`reward = "model"`: a `reward_model` run's head on the VAE
latents of the decoded frames and the prompt; it must share this pipeline's VAE and text
encoder, as the shapes world's runs do) or a pixel reward of `PIXEL_REWARDS` by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion.guidance import classifier_free_guidance
from mv2_jax.diffusion.noise_prior import mean_shift_prior
from mv2_jax.diffusion.sampler import denoise_with_last_steps_differentiable, steps_bucket
from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.training.reward_model import as_clips, load_reward_model
from mv2_jax.training.stage import key_streams
from mv2_jax.weights.load import load_component

# reward(consts, pixels [B, F, H, W, 3] in [-1, 1], context [B, L, D]) → [B]
RewardFn = Callable[[dict, jax.Array, jax.Array], jax.Array]
BASES = ("t2i", "i2v")


def mean_brightness(consts: dict, pixels: jax.Array, context: jax.Array) -> jax.Array:
    """Mean pixel value in [0, 1] per example: the simplest differentiable reward (a check
    that tuning raises what it is told to; DRaFT's own sanity reward is aesthetic, not this)."""
    del consts, context
    return jnp.mean((pixels + 1.0) / 2.0, axis=tuple(range(1, pixels.ndim)))


PIXEL_REWARDS: dict[str, RewardFn] = {"brightness": mean_brightness}


@dataclass
class RewardGradientStage:
    """`inner`: the t2i or i2v stage whose params, data and conditioning are tuned;
    `reward`: R as a function of (consts, pixels, context); `reward_consts`: its frozen
    params, added to the inner stage's consts."""

    needs_pipeline: ClassVar[bool] = True
    uses_config_data: ClassVar[bool] = True

    inner: Any
    settings: Any  # the config's `reward_gradient` section
    scheduler: Any  # DDIM with the pipeline's config: static
    tables: dict  # its step tables for settings.num_inference_steps (traced in the step)
    reward: RewardFn
    reward_consts: dict
    image_size: tuple[int, int]  # (height, width) of the samples: config.data's
    param_dtype: Any
    seed: int

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None) -> RewardGradientStage:
        from mv2_jax.training.trainer import stage_class

        g = config.reward_gradient
        if g.base not in BASES:
            raise ValueError(f"reward_gradient.base={g.base!r}; choose one of {BASES}")
        if g.grad_steps < 1 or g.grad_steps > g.num_inference_steps:
            raise ValueError(
                f"reward_gradient.grad_steps={g.grad_steps}: K must be in 1 … "
                f"num_inference_steps ({g.num_inference_steps})"
            )
        inner = stage_class(g.base).from_config(config, pipeline, mesh, workdir=workdir)
        if inner.sdxl:
            raise NotImplementedError("reward-gradient tuning samples SD1.x/2.x UNets, not SDXL")
        scheduler_file = pipeline / "scheduler" / "scheduler_config.json"
        scheduler = make_scheduler(json.loads(scheduler_file.read_text()), "ddim")
        steps = g.num_inference_steps
        tables = scheduler.tables(steps, steps_bucket(steps))
        reward, reward_consts = reward_of_config(g, inner)
        return cls(
            inner=inner,
            settings=g,
            scheduler=scheduler,
            tables=tables,
            reward=reward,
            reward_consts=reward_consts,
            image_size=(config.data.height, config.data.width),
            param_dtype=inner.param_dtype,
            seed=config.seed,
        )

    # ---- what the inner stage has: its params, data, host-side preparation

    @property
    def consts(self) -> dict:
        tables = {k: jnp.asarray(v) for k, v in self.tables.items()}
        return {**self.inner.consts, "reward": self.reward_consts, "tables": tables}

    def param_shapes(self) -> dict:
        return self.inner.param_shapes()

    def param_shardings(self, mesh, rules) -> dict:
        return self.inner.param_shardings(mesh, rules)

    def load_params(self, shardings) -> dict:
        """The inner stage's params; for i2v, the pipeline folder's own appearance encoder
        (`load_conditionings`) rather than a copy of the UNet's spatial layers."""
        params = self.inner.load_params(shardings)
        folder = self.inner.unet_folder.parent / "appearance_encoder"
        if "appearance" in params and self.settings.load_conditionings and folder.is_dir():
            params["appearance"] = load_component(
                folder, self.param_dtype, shardings["appearance"]
            )[1]
        return params

    def trainable_patterns(self, patterns) -> tuple[str, ...]:
        return self.inner.trainable_patterns(patterns)

    def make_data_iterator(self, config) -> Iterator[dict]:
        return self.inner.make_data_iterator(config)

    def prepare(self, batch: dict) -> dict:
        """The inner stage's arrays; t2i keeps only the prompts (no image is read)."""
        out = self.inner.prepare(batch)
        if self.settings.base == "t2i":
            out = {k: v for k, v in out.items() if k not in ("pixels", "latents")}
        return out

    # ---- the loss (inside the jitted step)

    def sample_latents(self, params, consts, batch, keys) -> tuple[jax.Array, jax.Array]:
        """(x₀ latents `[B, (F,) h, w, c]` sampled by the tuned model, differentiable through
        the last K steps; the prompts' context `[B, L, D]`)."""
        g, inner = self.settings, self.inner
        k_noise, k_vae, k_steps, k_drop = key_streams(keys, 4)
        context, _ = inner.text_context(consts, batch, k_drop)
        empty = jnp.broadcast_to(consts["empty_context"], context.shape)
        use_cfg = g.guidance_scale > 1.0
        both = jnp.concatenate([empty, context]) if use_cfg else context
        if g.base == "t2i":
            factor, channels = inner.vae_scale_factor, inner.vae.latent_channels
            height, width = (n // factor for n in self.image_size)
            shape = (context.shape[0], height, width, channels)

            def predict(p, x, t):
                return inner.denoiser.apply({"params": p}, x, t, both)
        else:
            # The clip's frame 0 is the key image; only its latent is read (`predictor`), so
            # only it is encoded, and it stands in for every frame of the array passed on.
            if "latents" in batch:
                key_latent = batch["latents"][:, :1]
                frames = batch["latents"].shape[1]
            else:
                key_latent = inner.encode_pixels(consts["vae"], batch["pixels"][:, :1], k_vae)
                frames = batch["pixels"].shape[1]
            shape = (key_latent.shape[0], frames, *key_latent.shape[2:])
            key_latents = jnp.broadcast_to(key_latent, shape)
            key_latents = jnp.concatenate([key_latents, key_latents]) if use_cfg else key_latents
            # the appearance encoder reads the prompt on both halves, as ImageToVideoPipeline
            reference = jnp.concatenate([context, context]) if use_cfg else context

            def predict(p, x, t):
                return inner.predictor(p, key_latents, both, reference_context=reference)(x, t)

        def model_fn(p, x, t):
            x = jnp.concatenate([x, x]) if use_cfg else x
            out = predict(p, x, jnp.broadcast_to(t, (x.shape[0],)))
            if not use_cfg:
                return out
            uncond, cond = jnp.split(out, 2)
            return classifier_free_guidance(uncond, cond, g.guidance_scale)

        tables = consts["tables"]
        noise = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(k_noise)
        if g.base == "i2v" and g.noise_prior_strength > 0:  # as ImageToVideoPipeline starts
            noise = mean_shift_prior(key_latent[:, 0], noise, g.noise_prior_strength)
        latents = denoise_with_last_steps_differentiable(
            self.scheduler,
            tables,
            model_fn,
            params,
            noise * tables["init_noise_sigma"],
            k_steps[0],
            g.grad_steps,
        )
        return latents, context

    def decoded_frames(self, consts, latents, key) -> jax.Array:
        """Latents → pixels `[B, F', H, W, 3]` in [-1, 1] of a random window of
        `decode_frames` consecutive frames (all of them when 0, and for images)."""
        clips = as_clips(latents)
        window = self.settings.decode_frames
        if 0 < window < clips.shape[1]:
            first = jax.random.randint(key, (), 0, clips.shape[1] - window + 1)
            clips = jax.lax.dynamic_slice_in_dim(clips, first, window, axis=1)
        vae = self.inner.vae
        folded = vae.from_diffusion_latents(clips.reshape(-1, *clips.shape[2:]))
        pixels = jax.checkpoint(lambda z: vae.apply({"params": consts["vae"]}, z, method="decode"))(
            folded
        )
        return pixels.reshape(*clips.shape[:2], *pixels.shape[1:])

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """−reward_scale · mean reward of the decoded samples."""
        latents, context = self.sample_latents(params, consts, batch, keys)
        pixels = self.decoded_frames(consts, latents, jax.random.fold_in(keys[0], 1))
        rewards = self.reward(consts, pixels, context)
        loss = -self.settings.reward_scale * jnp.mean(rewards)
        return loss, {"loss": loss, "reward": jnp.mean(rewards), "reward_std": jnp.std(rewards)}


def reward_of_config(section, inner) -> tuple[RewardFn, dict]:
    """(R, its frozen params) of `reward_gradient.reward`: a pixel reward by name, or "model":
    the reward model of `reward_model_dir` on the VAE latents of the pixels and the context."""
    name = section.reward
    if name in PIXEL_REWARDS:
        return PIXEL_REWARDS[name], {}
    if name != "model":
        raise ValueError(
            f"reward_gradient.reward={name!r}; choose 'model' or one of {sorted(PIXEL_REWARDS)}"
        )
    if not section.reward_model_dir:
        raise ValueError(
            "reward_gradient.reward='model' needs reward_gradient.reward_model_dir, the workdir "
            "of a reward_model run (python train.py --config configs/reward.py:shapes ...)"
        )
    head, head_params = load_reward_model(section.reward_model_dir)
    vae = inner.vae

    def reward_model(consts, pixels, context):
        folded = pixels.reshape(-1, *pixels.shape[2:])
        posterior = vae.apply({"params": consts["vae"]}, folded, method="encode")
        latents = vae.to_diffusion_latents(posterior.mean)
        latents = latents.reshape(*pixels.shape[:2], *latents.shape[1:])
        return head.apply({"params": consts["reward"]}, latents, context)

    return reward_model, jax.tree.map(np.asarray, head_params)
