"""Image → video (MagicVideo-V2's I2V stage): a key image and a prompt → keyframes whose first
frame keeps the image's look.

The key image conditions the motion UNet in up to four ways, each switchable and scaled per call:
- *appearance encoder* (`mv2_jax.models.appearance`): reference attention to the key image's
  features, computed once per video (`reference_scale`);
- *RGB ControlNet* (`SparseControlNetModel`, SparseCtrl RGB, or an SD `ControlNetModel` run per
  frame) fed the key image on the first frame or on all frames (`controlnet_scale`,
  `controlnet_frames`);
- *IP-Adapter* image-prompt cross-attention (`ip_adapter_scale`), when the UNet has one and the
  pipeline its CLIP image encoder;
- *latent noise prior* (`mv2_jax.diffusion.noise_prior`): the sampler starts from noise shifted
  toward the key image's latent (`noise_prior`, `noise_prior_strength`).
Scales are traced (changing them, 0 included, reuses the compiled function); switching a
conditioning on or off (scale None) or changing the noise prior's kind compiles once more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.data.decode import resize_and_crop
from mv2_jax.diffusion.noise_prior import frequency_prior, mean_shift_prior
from mv2_jax.media import to_uint8
from mv2_jax.models.appearance import (
    encode_reference,
    tile_reference,
    with_reference_scale,
)
from mv2_jax.models.clip_vision import preprocess_images
from mv2_jax.models.controlnet import SparseControlNetModel
from mv2_jax.pipelines.base import prompt_count
from mv2_jax.pipelines.defaults import (
    CONTROLNET_FRAMES,
    NOISE_PRIORS,
    PAPER_I2V_SIZE,
    STAGE_DEFAULTS,
)
from mv2_jax.pipelines.request import (
    Prepared,
    SamplingRequest,
    check_choice,
    check_unit_interval,
    from_arguments,
)
from mv2_jax.pipelines.t2v import TextToVideoPipeline


@dataclass(frozen=True, kw_only=True, eq=False)
class ImageToVideoRequest(SamplingRequest):
    """`SamplingRequest` plus the key image and its conditionings' scales and options (see the
    module docstring; a scale None skips that conditioning)."""

    image: Any = None
    reference_scale: float | None = 1.0
    controlnet_scale: float | None = 1.0
    ip_adapter_scale: float | None = 1.0
    controlnet_frames: str = "first"
    noise_prior: str = "mean_shift"
    noise_prior_strength: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.noise_prior, "noise_prior", NOISE_PRIORS)
        check_choice(self.controlnet_frames, "controlnet_frames", CONTROLNET_FRAMES)
        check_unit_interval(self.noise_prior_strength, "noise_prior_strength")
        for name in ("reference_scale", "controlnet_scale", "ip_adapter_scale"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None, got {value}")


@dataclass
class ImageToVideoPipeline(TextToVideoPipeline):
    """`pipe(image, prompt, ...) → videos [B,F,H,W,3]` in [0,1]; see the module docstring.

    `appearance` is `(spatial UNet, params)` of the appearance encoder, `controlnet` is
    `(ControlNetModel or SparseControlNetModel, params)`, `image_encoder` the
    `(CLIPVisionModelWithProjection, params)` of an IP-Adapter loaded into the UNet
    (`mv2_jax.weights.ip_adapter.load_ip_adapter`); any may be None."""

    appearance: tuple[Any, Any] | None = None
    controlnet: tuple[Any, Any] | None = None
    image_encoder: tuple[Any, Any] | None = None

    def components(self) -> dict[str, tuple[Any, Any]]:
        models = super().components()
        if self.appearance is not None:
            models["appearance"] = self.appearance
        if self.controlnet is not None:
            models["controlnet"] = self.controlnet
        if self.image_encoder is not None:
            models["image_encoder"] = self.image_encoder
        return models

    def __post_init__(self):
        if self.unet.encoder_hid_dim_type == "ip_image_proj" and self.image_encoder is None:
            raise ValueError(
                "the UNet has an IP-Adapter but the pipeline has no image_encoder (a "
                "CLIPVisionModelWithProjection) to embed the key image; pass one"
            )

    @property
    def has_ip_adapter(self) -> bool:
        return self.image_encoder is not None and self.unet.encoder_hid_dim_type == "ip_image_proj"

    @property
    def default_size(self) -> int:
        native = super().default_size
        return PAPER_I2V_SIZE if native >= 512 else native

    def request(
        self,
        image,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        *,
        num_inference_steps: int = STAGE_DEFAULTS["i2v"].steps,
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
        reference_scale: float | None = 1.0,
        controlnet_scale: float | None = 1.0,
        ip_adapter_scale: float | None = 1.0,
        controlnet_frames: str = "first",
        noise_prior: str = "mean_shift",
        noise_prior_strength: float = 0.05,
    ) -> ImageToVideoRequest:
        """Videos `[B·num_videos_per_prompt, F, H, W, 3]` in [0,1] from `image` (`[H,W,3]` or
        one per prompt `[B,H,W,3]`, float in [0,1] or uint8; scaled to cover `height × width`
        and centre-cropped). Default size: the model's (600² for SD1.5-size models, as in the
        paper), default frames: 32 or the motion modules' maximum. A conditioning whose scale is
        None (or that the pipeline lacks) is skipped; a scale of 0 runs it at zero weight (the
        same program as any other scale). `noise_prior` is "none", "mean_shift"
        (z_T = √a·z_ref + √(1−a)·ε, a = `noise_prior_strength`) or "frequency"."""
        return from_arguments(ImageToVideoRequest, locals())

    def frame_count(self, request: SamplingRequest) -> int:
        if request.num_frames is None:  # the paper's 32, or the motion modules' maximum
            limit = self.unet.motion_max_seq_length
            request = dataclasses.replace(
                request, num_frames=min(STAGE_DEFAULTS["i2v"].num_frames, limit)
            )
        return super().frame_count(request)

    def condition(self, request: ImageToVideoRequest, prepared: Prepared, pooled) -> Prepared:
        """The key image fitted to the output size, and which conditionings run."""
        del pooled
        batch, _, h, w, _ = prepared.program.shape
        use_control = self.controlnet is not None and request.controlnet_scale is not None
        prompts = prompt_count(request.prompt)
        factor = self.vae_scale_factor
        images = fit_images(request.image, prompts, h * factor, w * factor)
        return prepared.adding(
            dict(
                reference=self.appearance is not None and request.reference_scale is not None,
                ip_adapter=self.has_ip_adapter,  # (its UNet needs image embeddings)
                controlnet_frames=request.controlnet_frames if use_control else None,
                noise_prior=request.noise_prior,
            ),
            inputs={"image": np.repeat(images, batch // prompts, axis=0)},
            scalars=dict(
                reference_scale=np.float32(request.reference_scale or 0.0),
                controlnet_scale=np.float32(request.controlnet_scale or 0.0),
                ip_adapter_scale=np.float32(request.ip_adapter_scale or 0.0),
                noise_prior_strength=np.float32(request.noise_prior_strength),
            ),
        )

    # ------------------------------------------------------------------ traced

    def conditions(self, program, params, inputs, scalars) -> dict:
        """The key image's latent and features, once per video."""
        reference_latent = self.encode_images(
            params["vae"], inputs["image"], program.decode_chunk_size, program.vae_tile_size
        )  # [B,h,w,C]
        out = {}
        if program.noise_prior != "none":
            out["noise"] = self._noise_prior(program, inputs["noise"], reference_latent, scalars)
        copies = 2 if program.use_cfg else 1
        context = inputs["context"]
        cond_kwargs = None
        if program.ip_adapter:
            encoder, _ = self.image_encoder
            pixels = preprocess_images(inputs["image"], encoder.image_size)
            embeds = encoder.apply({"params": params["image_encoder"]}, pixels).image_embeds
            cond_kwargs = {"image_embeds": embeds, "ip_adapter_scale": scalars["ip_adapter_scale"]}
            # the unconditional half sees a zero image embedding, as in diffusers
            out["added_cond_kwargs"] = {
                "image_embeds": jnp.concatenate([jnp.zeros_like(embeds)] * (copies - 1) + [embeds]),
                "ip_adapter_scale": scalars["ip_adapter_scale"],
            }
        if program.reference:
            encoder, _ = self.appearance
            cond_context = context[context.shape[0] // copies * (copies - 1) :]
            features = encode_reference(
                encoder, params["appearance"], reference_latent, cond_context, cond_kwargs
            )
            features = with_reference_scale(features, scalars["reference_scale"])
            out["reference"] = tile_reference(features, copies)
        if program.controlnet_frames is not None:
            cond, mask = self._control_condition(program, reference_latent, inputs["image"])
            out["control_cond"] = jnp.concatenate([cond] * copies)
            out["control_mask"] = jnp.concatenate([mask] * copies)
            out["controlnet_scale"] = scalars["controlnet_scale"]
        return out

    def _control_condition(self, program, reference_latent, image):
        """`(condition [B,F,H',W',C'], mask [B,F])`: the key image on frame 0 (or every frame),
        zeros elsewhere; SparseCtrl RGB with the simplified embedding takes its latent, other
        ControlNets its pixels in [0,1], as diffusers' pipelines feed them."""
        controlnet, _ = self.controlnet
        frames = program.shape[1]
        mask = jnp.ones((image.shape[0], frames), jnp.float32)
        if program.controlnet_frames == "first":
            mask = mask.at[:, 1:].set(0.0)
        simplified = (
            isinstance(controlnet, SparseControlNetModel)
            and controlnet.use_simplified_condition_embedding
        )
        pixels = reference_latent if simplified else image
        cond = pixels[:, None] * mask[:, :, None, None, None].astype(pixels.dtype)
        return cond, mask

    def _noise_prior(self, program, noise, reference_latent, scalars) -> jax.Array:
        """The unit-scale starting noise with the key image's latent mixed in (the template
        then scales it by the scheduler's initial sigma)."""
        strength = scalars["noise_prior_strength"]
        if program.noise_prior == "mean_shift":
            return mean_shift_prior(reference_latent, noise, strength)
        alphas = jnp.asarray(program.scheduler.train_alphas_cumprod(), jnp.float32)
        first = scalars["tables"]["timesteps"][0].astype(jnp.int32)
        key = jax.random.fold_in(jax.random.key(scalars["seed"]), 2)
        reference_noise = jax.random.normal(key, noise.shape, noise.dtype)
        prior = frequency_prior(
            reference_latent, noise, reference_noise, alphas[jnp.clip(first, 0, len(alphas) - 1)]
        )
        # the strength blends toward the prior: 0 = plain noise, 1 = the full frequency prior
        return jnp.sqrt(strength) * prior + jnp.sqrt(1.0 - strength) * noise

    def predict_noise(self, program, params, inputs, x, t):
        variables = {"params": params["unet"]}
        if "reference" in inputs:
            variables["reference"] = inputs["reference"]
        residuals = {}
        if "control_cond" in inputs:
            residuals = self._control_residuals(params["controlnet"], inputs, x, t)
        return self.apply_unet(program, variables, inputs, x, t, **residuals)

    def _control_residuals(self, controlnet_params, inputs, x, t) -> dict:
        controlnet, _ = self.controlnet
        variables = {"params": controlnet_params}
        scale, cond, mask = (
            inputs["controlnet_scale"],
            inputs["control_cond"],
            inputs["control_mask"],
        )
        if isinstance(controlnet, SparseControlNetModel):
            down, mid = controlnet.apply(
                variables, x, t, inputs["context"], cond, scale, conditioning_mask=mask
            )
        else:  # an image ControlNet, frame by frame; frames without the image get no residual
            n, frames = x.shape[:2]
            down, mid = controlnet.apply(
                variables,
                x.reshape(n * frames, *x.shape[2:]),
                jnp.repeat(t, frames),
                jnp.repeat(inputs["context"], frames, axis=0),
                cond.reshape(n * frames, *cond.shape[2:]),
                scale,
            )
            keep = mask.reshape(n * frames, 1, 1, 1)
            down, mid = tuple(d * keep for d in down), mid * keep
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def fit_images(image, count: int, height: int, width: int) -> np.ndarray:
    """`image` (`[H,W,3]` for every prompt or `[count,H,W,3]`; float in [0,1] or uint8) →
    float32 `[count, height, width, 3]`, scaled to cover and centre-cropped."""
    pixels = to_uint8(image, "image")
    if pixels.ndim == 3:
        pixels = np.repeat(pixels[None], count, axis=0)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"image: expected [H,W,3] or [B,H,W,3], got shape {pixels.shape}")
    if pixels.shape[0] != count:
        raise ValueError(f"{pixels.shape[0]} images for {count} prompts; give one or one each")
    return resize_and_crop(pixels, height, width, None).astype(np.float32) / 255.0
