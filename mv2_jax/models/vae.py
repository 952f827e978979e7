"""`AutoencoderKL`: the Stable Diffusion VAE, channels-last, with diffusers' config and key names.

Besides plain `encode` / `decode` it has memory-bounded forms for large images and long videos:
tiled encode / decode with diffusers' exact tiling semantics, and frame-chunked video calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from mv2_jax.models.config import module_from_config
from mv2_jax.models.layers import activation, conv, group_norm
from mv2_jax.models.resnet import Upsample2D
from mv2_jax.models.tiling import tiled_map
from mv2_jax.models.unet_blocks import DownBlock, UNetMidBlock2D, _Stage

# The VAE's norms use a fixed epsilon in diffusers, whatever the config says.
_EPS = 1e-6
# `sample_size` only sets the default tile size (as in diffusers); `force_upcast` is a hint to
# pipelines, here replaced by choosing `dtype`.
_IGNORED = ("force_upcast",)


@struct.dataclass
class DiagonalGaussianDistribution:
    """The posterior q(z|x) = N(mean, exp(logvar)), channels-last; `logvar` clamped to [-30, 20]
    as in diffusers (and the original LDM code), so `std` never under- or overflows."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> DiagonalGaussianDistribution:
        """From the encoder's `[..., 2C]` output: first half mean, second half log-variance."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        noise = jax.random.normal(rng, self.mean.shape, self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> jax.Array:
        """KL(self ‖ other), `other` the standard normal by default; summed per example `[B]`."""
        axes = tuple(range(1, self.mean.ndim))
        if other is None:
            terms = self.mean**2 + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean) ** 2 / other.var
                + self.var / other.var
                - 1.0
                - self.logvar
                + other.logvar
            )
        return 0.5 * jnp.sum(terms, axis=axes)


class UpDecoderBlock2D(_Stage):
    """diffusers' `UpDecoderBlock2D`: ResNets without time embedding, then a 2× upsample.
    (`DownEncoderBlock2D` is `DownBlock` with `temb_channels=None` and `downsample_padding=0`.)"""

    add_upsample: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = self.resnet(i)(x)
        if self.add_upsample:
            x = Upsample2D(
                self.out_channels,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="upsamplers_0",
            )(x)
        return x


class _Coder(nn.Module):
    """Fields shared by `Encoder` and `Decoder` (diffusers' `vae.Encoder` / `vae.Decoder`)."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    act_fn: str
    mid_block_add_attention: bool
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def stage_kwargs(self) -> dict:
        return dict(
            temb_channels=None,
            resnet_eps=_EPS,
            resnet_groups=self.norm_num_groups,
            resnet_act_fn=self.act_fn,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def mid_block(self, x: jax.Array) -> jax.Array:
        return UNetMidBlock2D(
            x.shape[-1],
            1,
            add_attention=self.mid_block_add_attention,
            name="mid_block",
            **self.stage_kwargs(),
        )(x)

    def head(self, x: jax.Array, out_channels: int) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = group_norm(self.norm_num_groups, _EPS, name="conv_norm_out", **kw)(x)
        # diffusers hard-codes SiLU here; `act_fn` only reaches the ResNets.
        x = activation("silu")(x)
        return conv(out_channels, 3, name="conv_out", **kw)(x)


class Encoder(_Coder):
    """`[B,H,W,in_channels]` → moments `[B,H/f,W/f,2·out_channels]`, f = 2^(blocks−1)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = self.block_out_channels
        x = conv(channels[0], 3, name="conv_in", dtype=self.dtype, param_dtype=self.param_dtype)(
            x.astype(self.dtype)
        )
        for i, out in enumerate(channels):
            x, _ = DownBlock(
                out,
                self.layers_per_block,
                add_downsample=i < len(channels) - 1,
                downsample_padding=0,
                name=f"down_blocks_{i}",
                **self.stage_kwargs(),
            )(x, None)
        return self.head(self.mid_block(x), 2 * self.out_channels)


class Decoder(_Coder):
    """`[B,h,w,in_channels]` latents → `[B,h·f,w·f,out_channels]`."""

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        channels = tuple(reversed(self.block_out_channels))
        x = conv(channels[0], 3, name="conv_in", dtype=self.dtype, param_dtype=self.param_dtype)(
            z.astype(self.dtype)
        )
        x = self.mid_block(x)
        for i, out in enumerate(channels):
            x = UpDecoderBlock2D(
                out,
                self.layers_per_block + 1,
                add_upsample=i < len(channels) - 1,
                name=f"up_blocks_{i}",
                **self.stage_kwargs(),
            )(x)
        return self.head(x, self.out_channels)


class AutoencoderKL(nn.Module):
    """diffusers' `AutoencoderKL`, channels-last. No scaling factor is applied inside.

    `encode(x[B,H,W,3])` → `DiagonalGaussianDistribution` over `[B,H/f,W/f,latent_channels]`,
    `decode(z)` → `[B,H,W,3]`, `__call__(x, rng, sample_posterior)` does both.
    Memory-bounded forms: `tiled_encode` / `tiled_decode` (diffusers' `enable_tiling()` numbers;
    tiles run one at a time) and `encode_video` / `decode_video` (`[B,F,...]`, frames in chunks).
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32  # only the default tile size, as in diffusers
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> AutoencoderKL:
        return module_from_config(cls, config, ignored=_IGNORED, **overrides)

    def setup(self):
        n = len(self.block_out_channels)
        for key, known in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            if tuple(getattr(self, key)) != (known,) * n:
                raise NotImplementedError(
                    f"AutoencoderKL: {key}={getattr(self, key)!r}; only {n} × {known!r} "
                    "(one per block_out_channels entry) is implemented"
                )
        coder = dict(
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            act_fn=self.act_fn,
            mid_block_add_attention=self.mid_block_add_attention,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.encoder = Encoder(self.in_channels, self.latent_channels, **coder)
        self.decoder = Decoder(self.latent_channels, self.out_channels, **coder)
        kw = dict(padding=0, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.use_quant_conv:
            self.quant_conv = conv(2 * self.latent_channels, 1, **kw)
        if self.use_post_quant_conv:
            self.post_quant_conv = conv(self.latent_channels, 1, **kw)

    def to_diffusion_latents(self, z: jax.Array) -> jax.Array:
        """VAE latents → the unit-scale latents the UNet sees: `z·scaling_factor`, or
        `(z − mean)·scaling_factor/std` when the config gives per-channel statistics (the
        pipelines' convention; plain attribute math, no params: call it on the module)."""
        if self.latents_mean is not None and self.latents_std is not None:
            mean, std = jnp.asarray(self.latents_mean), jnp.asarray(self.latents_std)
            return (z - mean) * self.scaling_factor / std
        return z * self.scaling_factor

    def from_diffusion_latents(self, latents: jax.Array) -> jax.Array:
        """The inverse of `to_diffusion_latents`, before `decode`."""
        if self.latents_mean is not None and self.latents_std is not None:
            mean, std = jnp.asarray(self.latents_mean), jnp.asarray(self.latents_std)
            return latents * std / self.scaling_factor + mean
        return latents / self.scaling_factor

    def _moments(self, x: jax.Array) -> jax.Array:
        h = self.encoder(x)
        return self.quant_conv(h) if self.use_quant_conv else h

    def encode(self, x: jax.Array) -> DiagonalGaussianDistribution:
        """`x[B,H,W,in_channels]` (in [-1, 1]) → posterior over `[B,H/f,W/f,latent_channels]`."""
        return DiagonalGaussianDistribution.from_moments(self._moments(x))

    def decode(self, z: jax.Array) -> jax.Array:
        """`z[B,h,w,latent_channels]` (unscaled latents) → `[B,h·f,w·f,out_channels]`."""
        z = z.astype(self.dtype)
        return self.decoder(self.post_quant_conv(z) if self.use_post_quant_conv else z)

    def __call__(
        self, sample: jax.Array, rng: jax.Array | None = None, sample_posterior: bool = False
    ) -> jax.Array:
        posterior = self.encode(sample)
        if sample_posterior:
            if rng is None:
                raise ValueError("sample_posterior=True needs `rng`")
            return self.decode(posterior.sample(rng))
        return self.decode(posterior.mode())

    # ---- memory-bounded forms ----------------------------------------------------------------

    def _map(self, method: str, xs: jax.Array, *args) -> jax.Array:
        """`jax.lax.map` of a method over the leading axis of `xs` (a lifted scan sharing the
        params), so only one slice's activations are alive at a time."""

        def body(module, carry, x):
            return carry, getattr(module, method)(x, *args)

        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False})
        return scan(self, None, xs)[1]

    def _tiled_run(self, x: jax.Array, method: str, tile_sample_size, overlap) -> jax.Array:
        """`decode` (latents in) or `_moments` (pixels in) with diffusers' tiling: tile and
        stride in the input's units, blend and kept crop in the output's."""
        size = tile_sample_size or self.sample_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        factor = 2 ** (len(self.block_out_channels) - 1)
        latent = int(size / factor)
        if method == "decode":
            tile, stride, blend = latent, int(latent * (1 - overlap)), int(size * overlap)
            keep, fits = size - blend, stride * factor == size - blend
        else:
            tile, stride, blend = size, int(size * (1 - overlap)), int(latent * overlap)
            keep, fits = latent - blend, (latent - blend) * factor == stride
        # Unless the kept crop equals the stride the output would not have the input's size
        # (diffusers does not check this and returns a mis-sized result).
        if not fits:
            raise ValueError(
                f"tile size {size} with overlap {overlap} does not tile evenly for a "
                f"{factor}× VAE; use a multiple of {4 * factor} with overlap 0.25"
            )
        if x.shape[1] <= tile and x.shape[2] <= tile:  # one tile: run whole, as diffusers does
            return getattr(self, method)(x)
        return tiled_map(lambda t: self._map(method, t), x, tile, stride, blend, keep)

    def tiled_decode(
        self, z: jax.Array, tile_sample_size: int | None = None, tile_overlap_factor: float = 0.25
    ) -> jax.Array:
        """`decode` of `z[B,h,w,C]` in overlapping latent tiles of `tile_sample_size / f`
        (default `sample_size / f`, as diffusers' `enable_tiling()`), seams blended over
        `tile_overlap_factor · tile_sample_size` pixels; equals diffusers' tiled decode."""
        return self._tiled_run(z, "decode", tile_sample_size, tile_overlap_factor)

    def tiled_encode(
        self, x: jax.Array, tile_sample_size: int | None = None, tile_overlap_factor: float = 0.25
    ) -> DiagonalGaussianDistribution:
        """`encode` in overlapping image tiles of `tile_sample_size`², moments blended over
        `tile_overlap_factor · tile_sample_size / f` latents; equals diffusers' tiled encode."""
        moments = self._tiled_run(x, "_moments", tile_sample_size, tile_overlap_factor)
        return DiagonalGaussianDistribution.from_moments(moments)

    def _frames(self, x: jax.Array, chunk: int, method: str, *args) -> jax.Array:
        """Apply an image method to `x[B,F,...]` `chunk` frames (× B images) at a time."""
        b, f, rest = x.shape[0], x.shape[1], x.shape[2:]
        n, chunk = (f // chunk, chunk) if 0 < chunk <= f else (1, f)
        pieces = []
        if n:
            main = jnp.moveaxis(x[:, : n * chunk].reshape(b, n, chunk, *rest), 1, 0)
            out = self._map(method, main.reshape(n, b * chunk, *rest), *args)
            out = jnp.moveaxis(out.reshape(n, b, chunk, *out.shape[2:]), 0, 1)
            pieces.append(out.reshape(b, n * chunk, *out.shape[3:]))
        if f > n * chunk:  # the remainder in one smaller call, rather than padded frames
            out = getattr(self, method)(x[:, n * chunk :].reshape(-1, *rest), *args)
            pieces.append(out.reshape(b, f - n * chunk, *out.shape[1:]))
        return jnp.concatenate(pieces, axis=1)

    def decode_video(
        self,
        z: jax.Array,
        frames_per_chunk: int = 1,
        tiled: bool = False,
        tile_sample_size: int | None = None,
        tile_overlap_factor: float = 0.25,
    ) -> jax.Array:
        """`z[B,F,h,w,C]` → `[B,F,H,W,3]`, decoding `frames_per_chunk` frames (≤ 0: all) per
        step of a `lax.map`, each frame exactly as `decode` (or `tiled_decode` with `tiled=True`)
        would; memory holds one chunk's activations plus the decoded frames."""
        tiling = ("_tiled_run", "decode", tile_sample_size, tile_overlap_factor)
        return self._frames(z, frames_per_chunk, *(tiling if tiled else ("decode",)))

    def encode_video(
        self,
        x: jax.Array,
        frames_per_chunk: int = 1,
        tiled: bool = False,
        tile_sample_size: int | None = None,
        tile_overlap_factor: float = 0.25,
    ) -> DiagonalGaussianDistribution:
        """`x[B,F,H,W,3]` → posterior over `[B,F,h,w,C]`, `frames_per_chunk` frames at a time."""
        tiling = ("_tiled_run", "_moments", tile_sample_size, tile_overlap_factor)
        moments = self._frames(x, frames_per_chunk, *(tiling if tiled else ("_moments",)))
        return DiagonalGaussianDistribution.from_moments(moments)
