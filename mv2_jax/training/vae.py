"""The autoencoder stage for the trainer: an `AutoencoderKL` (the latent space the diffusion
stages work in) trained from scratch on the frames of the run's `config.data`, with no pipeline
folder; optionally against a PatchGAN discriminator.

Loss per step, over all frames of the batch (videos `[B,F,…]` fold their frames into the batch):

    L_G = mean|x − decode(z)| + kl_weight · KL(q(z|x) ‖ N(0, I)) / (H·W·3)
          + adv_weight · [step ≥ adv_start_step] · hinge_G(decode(z)),    z ~ q(z|x),
    L_D = hinge_D(x real vs decode(z) fake)        (PatchGAN; only with adv_weight > 0).

The KL is summed over an image's latents and divided by its pixel values, so `kl_weight` means
what it does in Stable Diffusion's LDM configs (1e-6), where both terms are sums over the image.
As in `training/vfi.py`, the generator and discriminator share one optimizer: the generator's
adversarial term reads the discriminator's params through `stop_gradient`, the discriminator's
loss reads the reconstructions through `stop_gradient`, and one AdamW step updates both.

`export_vae` writes the trained autoencoder as a diffusers-format `AutoencoderKL` folder
(`config.json` + `diffusion_pytorch_model.safetensors`, read by `mv2_jax.load_component` and by
diffusers) whose `scaling_factor` is 1/std of the posterior means on the run's data, as Stable
Diffusion's 0.18215 was measured, so the diffusion stages see latents of unit variance.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.models.discriminator import PatchDiscriminator
from mv2_jax.models.vae import AutoencoderKL
from mv2_jax.training.config_data import data_iterator
from mv2_jax.training.stage import FreshModelStage, dtype_of
from mv2_jax.training.vfi_losses import hinge_discriminator, hinge_generator, psnr
from mv2_jax.weights.torch_layout import DIFFUSERS_WEIGHTS, write_torch_layout_folder

WEIGHTS_FILE = DIFFUSERS_WEIGHTS


def build_vae(model_config, dtype=jnp.float32, param_dtype=jnp.float32) -> AutoencoderKL:
    """The `AutoencoderKL` of a diffusers-style config dict (`config.vae.model`)."""
    return AutoencoderKL.from_config(dict(model_config), dtype=dtype, param_dtype=param_dtype)


@dataclass(kw_only=True)
class AutoencoderStage(FreshModelStage):
    uses_config_data: ClassVar[bool] = True  # the frames of config.data

    vae: AutoencoderKL
    discriminator: PatchDiscriminator | None  # None: adv_weight = 0, no GAN term
    settings: Any  # the config's `vae` section
    batch_size: int

    @classmethod
    def from_config(cls, config, pipeline: Path | None, mesh, workdir=None) -> AutoencoderStage:
        """The stage of `config` (`pipeline` is unused: the model comes from `config.vae`)."""
        v = config.vae
        compute, params = dtype_of(config.compute_dtype), dtype_of(config.param_dtype)
        vae = build_vae(v.model.to_dict(), compute, params)
        height, width = config.data.height, config.data.width
        factor = 2 ** (len(vae.block_out_channels) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"data {height}×{width}: the VAE downsamples by {factor}; use a height and "
                f"width that are multiples of {factor}"
            )
        if v.reconstruction_loss not in ("l1", "mse"):
            raise ValueError(f"vae.reconstruction_loss={v.reconstruction_loss!r}: l1 or mse")
        discriminator = None
        if v.adv_weight > 0:
            discriminator = PatchDiscriminator(
                tuple(v.discriminator_channels), dtype=compute, param_dtype=params
            )
        return cls(
            vae=vae,
            discriminator=discriminator,
            param_dtype=params,
            settings=v,
            batch_size=config.batch_size,
            seed=config.seed,
        )

    # ---- the params that train

    def _example(self) -> jax.Array:
        side = 2 ** max(len(self.vae.block_out_channels), self._disc_depth())
        return jnp.zeros((1, side, side, self.vae.in_channels))

    def _disc_depth(self) -> int:
        return len(self.discriminator.channels) if self.discriminator else 0

    def _init(self, key: jax.Array) -> dict:
        image = self._example()
        k_vae, k_disc = jax.random.split(key)
        params = {"vae": with_initial_logvar(self.vae.init(k_vae, image)["params"],
                                             self.settings.initial_logvar)}  # fmt: skip
        if self.discriminator is not None:
            params["discriminator"] = self.discriminator.init(k_disc, image)["params"]
        return nn.meta.unbox(params)

    # ---- host side

    def make_data_iterator(self, config) -> Iterator[dict]:
        """The batches of the run's `config.data`."""
        return data_iterator(config)

    def prepare(self, batch: dict) -> dict:
        """Pixels `[B,F,H,W,3]` as float32 (captions are not used); each example's global
        `position` and the step it belongs to (`train_step`, which switches the adversarial term
        on: position // batch_size counts the steps of a single-source run exactly)."""
        position = np.asarray(batch["position"], np.int64)
        return {
            "pixels": np.asarray(batch["pixels"], np.float32),
            "position": position.astype(np.uint32),
            "train_step": (position // self.batch_size).astype(np.int32),
        }

    # ---- the loss (inside the jitted step)

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        s = self.settings
        pixels = batch["pixels"]
        frames = pixels.shape[1]
        images = pixels.reshape(-1, *pixels.shape[2:])  # frames folded into the batch
        posterior = self.vae.apply({"params": params["vae"]}, images, method="encode")
        mean = posterior.mean.astype(jnp.float32)
        logvar = posterior.logvar.astype(jnp.float32)
        # Each clip's frames draw their noise from the clip's key.
        noise = jax.vmap(lambda k: jax.random.normal(k, (frames, *mean.shape[1:])))(keys)
        z = mean + jnp.exp(0.5 * logvar) * noise.reshape(mean.shape)
        recon = self.vae.apply({"params": params["vae"]}, z, method="decode")
        recon = recon.astype(jnp.float32)
        error = recon - images
        l1 = jnp.mean(jnp.abs(error))
        mse = jnp.mean(error**2)
        reconstruction = {"l1": l1, "mse": mse}[s.reconstruction_loss]
        kl = jnp.mean(0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
        g_loss = reconstruction + s.kl_weight * kl / np.prod(images.shape[1:])
        metrics = {
            "l1": l1,
            "mse": mse,
            "kl": kl,
            "latent_std": jnp.std(mean),
            "psnr": psnr((jnp.clip(recon, -1, 1) + 1) / 2, (images + 1) / 2),
        }
        if self.discriminator is None:
            return g_loss, metrics

        def judge(disc_params, x):
            return self.discriminator.apply({"params": disc_params}, x)

        adv = hinge_generator(judge(jax.lax.stop_gradient(params["discriminator"]), recon))
        adv_on = jnp.max(batch["train_step"] >= s.adv_start_step).astype(jnp.float32)
        g_loss = g_loss + s.adv_weight * adv_on * adv
        d_loss = hinge_discriminator(
            judge(params["discriminator"], images),
            judge(params["discriminator"], jax.lax.stop_gradient(recon)),
        )
        metrics.update(adv=adv, d_loss=d_loss, g_loss=g_loss)
        return g_loss + d_loss, metrics


def with_initial_logvar(params: dict, logvar: float) -> dict:
    """`params` with the posterior's log-variance starting at `logvar` (the bias of the logvar
    half of `quant_conv`, or of the encoder's `conv_out` without it). A fresh encoder's
    logvar ≈ 0 would put unit noise on latents of about unit scale: the decoder then learns
    from noise, and L1 stalls (≈19 dB on the shapes world for 500 steps) while the encoder
    slowly shrinks it."""
    params = nn.meta.unbox(params)
    layer = "quant_conv" if "quant_conv" in params else None
    holder = params[layer] if layer else params["encoder"]["conv_out"]
    bias = holder["bias"]
    half = bias.shape[0] // 2
    holder["bias"] = jnp.asarray(bias).at[half:].set(logvar)
    return params


# ---- export -------------------------------------------------------------------------------


def write_vae_folder(folder: str | Path, vae: AutoencoderKL, params, scaling_factor: float):
    """`folder/config.json` (the module's diffusers config with `scaling_factor`) and
    `folder/diffusion_pytorch_model.safetensors` in diffusers' layout."""
    from mv2_jax.training.export import module_config

    config = {**module_config(vae), "scaling_factor": float(scaling_factor)}
    return write_torch_layout_folder(folder, config, params, WEIGHTS_FILE)


def latent_std(vae: AutoencoderKL, params, batches) -> float:
    """The standard deviation of the posterior means over all elements of `batches` (dicts
    with `pixels` `[B,F,H,W,3]` in [-1, 1])."""

    @jax.jit
    def means(pixels):
        images = pixels.reshape(-1, *pixels.shape[2:])
        return vae.apply({"params": params}, images, method="encode").mean

    values = np.concatenate([np.asarray(means(b["pixels"])).ravel() for b in batches])
    return float(values.std())


def data_batches(config, count: int) -> list[dict]:
    """The first `count` batches of the run's `config.data`, as the trainer reads them."""
    iterator = data_iterator(config)
    return [{"pixels": np.asarray(next(iterator)["pixels"], np.float32)} for _ in range(count)]


def export_vae(workdir: str | Path, out: str | Path, step: int | None = None, ema: bool = True):
    """The autoencoder of a vae run (EMA by default, the latest checkpoint unless `step`) as an
    `AutoencoderKL` component folder at `out`, with `scaling_factor` = 1/std of its latents
    over `config.vae.scale_batches` batches of the run's data."""
    from mv2_jax.training.checkpoint import restore_params, run_config
    from mv2_jax.weights.new_folder import check_new_folder, new_folder

    check_new_folder(out)  # before the minutes of restoring and measuring
    config = run_config(workdir, "vae")
    params = restore_params(workdir, step, ema)["vae"]
    vae = build_vae(config.vae.model.to_dict())
    std = latent_std(vae, params, data_batches(config, config.vae.scale_batches))
    if not std > 0:
        raise ValueError(f"{workdir}: the latents have std {std}; is the model trained?")
    with new_folder(out) as partial:
        write_vae_folder(partial, vae, params, 1.0 / std)
    return Path(out)
