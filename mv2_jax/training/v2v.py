"""The video-to-video super-resolution stage for the trainer (MagicVideo-V2's V2V, arXiv:2401.04468
§2): the I2V backbone — the same spatial layers, its own motion modules — learns to denoise a
clip at the target resolution given the same clip at a lower one. The low-res clip's latents,
upsampled to the target's latent size and noise-augmented at a random level, are concatenated
to the noisy latents at `conv_in`; the level enters as `class_labels`, embedded like the SD x4
upscaler's `noise_level` (the conditioning math is `mv2_jax.diffusion.low_res`, shared with
`VideoToVideoPipeline`).

The low-res input is made on the device from each batch's own clip: resized down by `v2v.scale`
(antialiased bilinear, as a camera at the lower resolution would see it), VAE-encoded with its
own posterior sample. The appearance encoder and the SparseCtrl ControlNet work as in the I2V
stage (`config.i2v.*`; the key image is frame 0 at the target resolution), on the 4-channel
I2V UNet inside the V2V one: the ControlNet sees the noisy latents, not the low-res channels.

Init: `model.pipeline` (or `model.init`) holds an I2V model — an AnimateDiff / ImageToVideoPipeline
folder whose UNet takes 4 channels — converted by `v2v_unet_from_i2v` (zero new `conv_in`
channels, zero noise-level table: at step 0 the V2V UNet is the I2V UNet), or a V2V export whose
UNet already takes the low-res channels, loaded as it is. An ImageToVideoPipeline folder's trained
`appearance_encoder/` and `controlnet/` are where those start from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from mv2_jax.diffusion.low_res import noise_augment, upsample_latents
from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.training.i2v import (
    ImageToVideoStage,
    motion_unet_config,
    motion_unet_source,
)
from mv2_jax.training.losses import per_example_noise
from mv2_jax.training.stage import key_streams
from mv2_jax.weights.load import load_component
from mv2_jax.weights.v2v import i2v_unet_from_v2v, is_v2v_unet_config, v2v_unet_from_i2v

log = logging.getLogger(__name__)


def v2v_unet_config(unet_config: dict, config) -> dict:
    """The V2V UNet's config: `unet_config` as it is when it is V2V's already, else the I2V
    UNet's converted (`v2v_unet_from_i2v`); its noise-level table must hold
    `v2v.max_noise_level`."""
    if not is_v2v_unet_config(unet_config):
        unet_config, _ = v2v_unet_from_i2v(unet_config, None, config_only=True)
    levels = unet_config.get("num_class_embeds")
    if not levels:
        raise ValueError(
            "the pipeline's UNet takes low-res channels but has no noise-level table "
            "(num_class_embeds); start from an I2V model or a V2V export"
        )
    if not 0 <= config.v2v.max_noise_level < levels:
        raise ValueError(
            f"v2v.max_noise_level={config.v2v.max_noise_level}: the UNet's noise-level table "
            f"has {levels} entries (num_class_embeds); choose a level in [0, {levels - 1}]"
        )
    return unet_config


def controlnet_folder_of(config, pipeline: Path) -> Path | None:
    """The ControlNet to start from: `i2v.controlnet_from`, else the pipeline's `controlnet/`
    (an exported I2V or V2V run), else None (made from the UNet)."""
    if config.i2v.controlnet_from:
        return Path(config.i2v.controlnet_from)
    if (pipeline / "controlnet" / "config.json").is_file():
        return pipeline / "controlnet"
    return None


@dataclass
class VideoToVideoStage(ImageToVideoStage):
    scale: float = 2.0  # target size / low-res input size, in pixels
    max_noise_level: int = 0  # noise augmentation levels drawn from [0, max_noise_level]
    from_i2v: bool = True  # the pipeline's UNet is an I2V one, converted on load
    appearance_folder: Path | None = None  # the pipeline's trained appearance encoder

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None) -> VideoToVideoStage:
        if config.data.precomputed_dir:
            raise ValueError(
                "data.precomputed_dir: the v2v stage makes each clip's low-res input from its "
                "pixels; train from data.video_dir (and data.image_dir)"
            )
        if config.v2v.scale <= 1:
            raise ValueError(f"v2v.scale={config.v2v.scale}: the low-res input must be smaller")
        unet_config = motion_unet_config(*motion_unet_source(config, pipeline))
        appearance = pipeline / "appearance_encoder"
        stage = super().from_config(
            config,
            pipeline,
            mesh,
            scale=float(config.v2v.scale),
            max_noise_level=int(config.v2v.max_noise_level),
            from_i2v=not is_v2v_unet_config(unet_config),
            appearance_folder=appearance if (appearance / "config.json").is_file() else None,
        )
        stage.low_res_size(config.data.height, config.data.width)  # checks the sizes
        return stage

    # ---- the I2V backbone inside the V2V UNet (hooks of ImageToVideoStage)

    @classmethod
    def controlnet_source(cls, config, pipeline: Path) -> Path | None:
        """`controlnet_folder_of`: the pipeline's own `controlnet/` when it has one."""
        folder = controlnet_folder_of(config, pipeline)
        if folder is not None and not config.i2v.controlnet_from:
            log.info("the ControlNet starts from %s", folder)
        return folder

    @classmethod
    def unet_module(cls, config, unet_config: dict, where: str) -> UNetMotionModel:
        return super().unet_module(config, v2v_unet_config(unet_config, config), where)

    @staticmethod
    def conditioning_backbone(denoiser: UNetMotionModel) -> UNetMotionModel:
        """The I2V UNet inside (`i2v_unet_from_v2v`): conv_in on the noisy latents alone."""
        return denoiser.clone(
            in_channels=denoiser.out_channels, num_class_embeds=None, class_embed_type=None
        )

    def backbone_params(self, unet_params: dict) -> dict:
        channels = {"in_channels": self.denoiser.in_channels}
        channels["out_channels"] = self.denoiser.out_channels
        return i2v_unet_from_v2v(channels, unet_params)[1]

    def initial_unet_params(self, sharding) -> dict:
        """A V2V UNet's params as they are, or the I2V UNet's converted."""
        if not self.from_i2v:
            return super().initial_unet_params(sharding)
        i2v_params = super().initial_unet_params(None)
        i2v_config = motion_unet_config(self.unet_folder, self.motion_adapter)
        _, params = v2v_unet_from_i2v(i2v_config, i2v_params)
        return jax.device_put(params, sharding)

    def load_params(self, shardings) -> dict:
        params = super().load_params(shardings)
        if self.appearance is not None and self.appearance_folder is not None:
            log.info("the appearance encoder starts from %s", self.appearance_folder)
            params["appearance"] = load_component(
                self.appearance_folder, self.param_dtype, shardings["appearance"]
            )[1]
        return params

    # ---- host side

    def low_res_size(self, height: int, width: int) -> tuple[int, int]:
        """The low-res input's pixel size for a `height × width` target: divided by `scale`,
        rounded to whole latents."""
        factor = self.vae_scale_factor
        size = tuple(round(n / self.scale / factor) * factor for n in (height, width))
        if height % factor or width % factor or min(size) < factor:
            raise ValueError(
                f"data.height × data.width = {height} × {width} with v2v.scale={self.scale}: the "
                f"target must be a multiple of {factor} (the VAE's factor) and the low-res input "
                f"({size[0]} × {size[1]}) at least {factor} pixels"
            )
        return size

    def prepare(self, batch: dict) -> dict:
        if "pixels" not in batch:
            raise ValueError(
                "the v2v stage makes each clip's low-res input from its pixels; this batch has "
                "none (precomputed latents?)"
            )
        return super().prepare(batch)

    # ---- device side

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """Min-SNR-weighted denoising loss of `[B,F,…]` clips (F = 1: images) at the target
        resolution, given their low-res latents and noise level."""
        k_vae, k_drop, k_time, k_noise, k_low, k_level, k_augment = key_streams(keys, 7)
        latents = self.clean_latents(consts, batch, k_vae)  # [B,F,h,w,c]
        context, _ = self.text_context(consts, batch, k_drop)
        condition, levels = self.low_res_condition(
            consts["vae"], batch["pixels"], latents.shape[2:4], k_low, k_level, k_augment
        )
        predict = self.predictor(params, latents, context, condition, class_labels=levels)
        loss, metrics = self.denoising_loss(consts, latents, k_time, k_noise, predict)
        return loss, metrics

    def low_res_condition(
        self, vae_params, pixels, latent_size, vae_keys, level_keys, augment_keys
    ) -> tuple[jax.Array, jax.Array]:
        """(the low-res latents upsampled to `latent_size` and noise-augmented `[B,F,h,w,c]`,
        their noise levels `[B]` int32) for target `pixels` `[B,F,H,W,3]` in [-1, 1]."""
        height, width = self.low_res_size(*pixels.shape[2:4])
        small = jax.image.resize(
            pixels, (*pixels.shape[:2], height, width, 3), "linear", antialias=True
        )
        low_res = self.encode_pixels(vae_params, small, vae_keys)
        levels = jax.vmap(
            lambda k: jax.random.randint(k, (), 0, self.max_noise_level + 1, jnp.int32)
        )(level_keys)
        upsampled = upsample_latents(low_res, latent_size)
        noise = per_example_noise(augment_keys, upsampled.shape[1:], 0.0)
        return noise_augment(upsampled, levels, noise), levels
