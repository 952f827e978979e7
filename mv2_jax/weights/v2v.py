"""An I2V motion UNet → the V2V super-resolution UNet: `conv_in` takes the upsampled low-res
latents as extra input channels and a noise-level table (`num_class_embeds`, the SD x4
upscaler's `noise_level` embedding) joins the time embedding; both start at zero, so the
converted UNet computes exactly what the I2V UNet did, whatever the low-res input and level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from mv2_jax.diffusion.low_res import NUM_NOISE_LEVELS
from mv2_jax.models.motion import UNetMotionModel


def v2v_unet_from_i2v(
    config: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    *,
    low_res_channels: int | None = None,
    num_noise_levels: int = NUM_NOISE_LEVELS,
    config_only: bool = False,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`(config, params)` of the V2V UNet made from an I2V `UNetMotionModel`'s config.json dict
    and params. `in_channels` grows by `low_res_channels` (default: the UNet's own latent
    channels, `out_channels`), appended after the noisy latents' channels: the input is
    `concat([noisy, low_res], -1)`. The new `conv_in` kernel rows `[kh, kw, low_res, out]` and
    the `class_embedding` table `[num_noise_levels, time_dim]` are zeros in the params' dtype.
    `config_only=True` converts the config alone (`params` may be None; returned as given)."""
    config = dict(config)
    in_channels = config.get("in_channels", 4)
    out_channels = config.get("out_channels", 4)
    if in_channels != out_channels:
        raise ValueError(
            f"v2v_unet_from_i2v: the UNet takes {in_channels} channels and predicts "
            f"{out_channels}; an I2V UNet takes what it predicts (already converted?)"
        )
    for key in ("num_class_embeds", "class_embed_type"):
        if config.get(key) is not None:
            raise ValueError(
                f"v2v_unet_from_i2v: the UNet has a class embedding already ({key}="
                f"{config[key]!r}); convert an I2V UNet"
            )
    extra = out_channels if low_res_channels is None else low_res_channels
    if extra < 1 or num_noise_levels < 1:
        raise ValueError(
            f"low_res_channels={extra} and num_noise_levels={num_noise_levels} must be ≥ 1"
        )
    config.update(in_channels=in_channels + extra, num_class_embeds=num_noise_levels)
    if config_only:
        return config, params
    if params is None:
        raise ValueError("v2v_unet_from_i2v: params=None needs config_only=True")

    kernel = params["conv_in"]["kernel"]  # [kh, kw, in, out]
    if kernel.shape[2] != in_channels:
        raise ValueError(
            f"conv_in kernel {tuple(kernel.shape)} does not take in_channels={in_channels}"
        )
    zeros = jnp.zeros((*kernel.shape[:2], extra, kernel.shape[3]), kernel.dtype)
    time_dim, _ = UNetMotionModel.from_config(config)._time_embed_dims()
    params = dict(params)
    params["conv_in"] = {**params["conv_in"], "kernel": jnp.concatenate([kernel, zeros], axis=2)}
    params["class_embedding"] = {"embedding": jnp.zeros((num_noise_levels, time_dim), kernel.dtype)}
    return config, params


def is_v2v_unet_config(config: Mapping[str, Any]) -> bool:
    """Whether a UNet config takes low-res channels beside the noisy latents (in = 2 × out)."""
    return config.get("in_channels", 4) == 2 * config.get("out_channels", 4)


def i2v_unet_from_v2v(
    config: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The I2V UNet inside a V2V one (the inverse of `v2v_unet_from_i2v`): `conv_in` on the
    noisy latents' channels only, no noise-level table. The appearance encoder and the
    ControlNet, which see the noisy latents alone, are made from it."""
    channels = config.get("out_channels", 4)
    config = {k: v for k, v in config.items() if k not in ("num_class_embeds", "class_embed_type")}
    config["in_channels"] = channels
    params = {k: v for k, v in params.items() if k != "class_embedding"}
    kernel = params["conv_in"]["kernel"]  # [kh, kw, in, out]
    params["conv_in"] = {**params["conv_in"], "kernel": kernel[:, :, :channels]}
    return config, params
