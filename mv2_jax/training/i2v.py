"""The image-to-video stage for the trainer (MagicVideo-V2's I2V, arXiv:2401.04468 §2): a motion
UNet (SD UNet + AnimateDiff motion modules) learns to denoise clips given their text and their
first frame, the key image, which enters through up to two conditionings, each switched by
config (`i2v.*`) and each with its own params:

- `appearance`: the appearance encoder (reference attention, `mv2_jax.models.appearance`), a
  spatial UNet initialised as the video UNet's spatial weights, run on the clean latent of
  frame 0 at t = 0; the video UNet's self-attention attends to its features.
- `controlnet`: a SparseCtrl RGB ControlNet (`SparseControlNetModel`) fed frame 0's clean
  latent with a first-frame-only mask, its residuals added to the UNet's; initialised from the
  UNet's encoder (zero output convs, so training starts from the plain motion UNet).

The params are one tree `{"unet", "appearance", "controlnet"}`, so `config.trainable` chooses
among them by globs (`unet/*motion_modules_*`, `appearance/*`, `controlnet/*`). The loss is the
shared denoising loss (`mv2_jax.training.stage`) over all frames.

Image batches (joint image–video training, `data.image_ratio`) run the same UNet at F = 1 with
its motion modules skipped — the spatial UNet exactly — and without reference conditioning: an
image as its own reference would let the model copy its target, so image steps only keep the
spatial layers' text-to-image prior (and change nothing unless spatial params train).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mv2_jax.models.appearance import (
    appearance_encoder,
    encode_reference,
    spatial_params,
    with_reference_scale,
)
from mv2_jax.models.controlnet import SparseControlNetModel
from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.models.remat import check_remat_policy
from mv2_jax.parallel.sharding import module_shardings_for
from mv2_jax.training.stage import LatentDiffusionStage, dtype_of, key_streams, module_param_shapes
from mv2_jax.weights.controlnet import controlnet_from_unet, controlnet_like
from mv2_jax.weights.load import build_module, load_component, read_config
from mv2_jax.weights.motion import MOTION, load_motion_unet, motion_config_from_unet2d

log = logging.getLogger(__name__)

CONDITIONINGS = ("appearance", "controlnet")


@dataclass
class ImageToVideoStage(LatentDiffusionStage):
    denoiser: Any  # UNetMotionModel, skip_motion_for_images, compute dtype and remat of config
    appearance: Any  # the appearance encoder's spatial UNet, or None
    controlnet: Any  # SparseControlNetModel, or None
    unet_folder: Path
    motion_adapter: Path | dict | None  # merged into an SD UNet on load (dict: new modules)
    controlnet_folder: Path | None  # None: the ControlNet starts from the UNet's weights

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None, **fields) -> ImageToVideoStage:
        """The stage of `config` from the `pipeline` folder (`fields`: a subclass's own)."""
        unet_folder, adapter = motion_unet_source(config, pipeline)
        unet = cls.unet_module(config, motion_unet_config(unet_folder, adapter), str(unet_folder))
        if not isinstance(unet, UNetMotionModel):
            raise ValueError(f"{unet_folder}: a {type(unet).__name__}, not a UNetMotionModel")
        frames = config.data.num_frames
        if not 2 <= frames <= unet.motion_max_seq_length:
            raise ValueError(
                f"data.num_frames={frames}: the {config.stage} stage trains on clips of 2 to "
                f"{unet.motion_max_seq_length} frames (the motion modules' motion_max_seq_length)"
            )
        denoiser = unet.clone(
            dtype=dtype_of(config.compute_dtype),
            remat_policy=check_remat_policy(config.remat_policy),
            skip_motion_for_images=True,
        )
        backbone = cls.conditioning_backbone(denoiser)
        controlnet, controlnet_folder = None, None
        if config.i2v.controlnet:
            controlnet_folder = cls.controlnet_source(config, pipeline)
            controlnet = sparse_controlnet(backbone, controlnet_folder)
        stage = cls.from_pipeline(
            config,
            pipeline,
            mesh,
            denoiser=denoiser,
            appearance=appearance_encoder(backbone) if config.i2v.appearance_encoder else None,
            controlnet=controlnet,
            unet_folder=unet_folder,
            motion_adapter=adapter,
            controlnet_folder=controlnet_folder,
            **fields,
        )
        if stage.sdxl:
            raise NotImplementedError("the i2v stage trains SD1.x/2.x motion UNets, not SDXL")
        return stage

    # ---- hooks for stages on this backbone (`mv2_jax.training.v2v`)

    @classmethod
    def unet_module(cls, config, unet_config: dict, where: str) -> Any:
        """The motion UNet that trains, from its folder's (merged) config."""
        return build_module(unet_config, dtype_of(config.param_dtype), where=where)[0]

    @classmethod
    def controlnet_source(cls, config, pipeline: Path) -> Path | None:
        """The ControlNet folder to start from: `i2v.controlnet_from`, else None (made from the
        UNet)."""
        return Path(config.i2v.controlnet_from) if config.i2v.controlnet_from else None

    @staticmethod
    def conditioning_backbone(denoiser: UNetMotionModel) -> UNetMotionModel:
        """The UNet the appearance encoder and the ControlNet are made from: here the denoiser."""
        return denoiser

    def backbone_params(self, unet_params: dict) -> dict:
        """The params of `conditioning_backbone` within the denoiser's: here all of them."""
        return unet_params

    def initial_unet_params(self, sharding) -> dict:
        """The motion UNet's params from the pipeline (merged with the motion adapter, or with
        new motion modules)."""
        if self.motion_adapter is None:
            return load_component(self.unet_folder, self.param_dtype, sharding)[1]
        if isinstance(self.motion_adapter, dict):
            image = load_component(self.unet_folder, self.param_dtype)[1]
            unet = self.denoiser.clone(skip_motion_for_images=False, dtype=jnp.float32)
            return jax.device_put(with_new_motion_modules(unet, image, self.seed), sharding)
        _, unet, _ = load_motion_unet(self.unet_folder, self.motion_adapter, self.param_dtype)
        return jax.device_put(unet, sharding)

    # ---- params: {"unet", "appearance", "controlnet"}

    def components(self) -> dict:
        models = dict(unet=self.denoiser, appearance=self.appearance, controlnet=self.controlnet)
        return {name: module for name, module in models.items() if module is not None}

    def _with_motion(self) -> dict:
        # traced at one frame, the denoiser would skip (and so not create) its motion modules
        return dict(self.components(), unet=self.denoiser.clone(skip_motion_for_images=False))

    def param_shapes(self) -> dict:
        modules = self._with_motion().items()
        return {name: module_param_shapes(m, self.param_dtype) for name, m in modules}

    def param_shardings(self, mesh, rules) -> dict:
        modules = self._with_motion().items()
        return {name: module_shardings_for(m, mesh, rules) for name, m in modules}

    def trainable_patterns(self, patterns) -> tuple[str, ...]:
        """`patterns` without the globs of a conditioning that is switched off (e.g. the
        default `controlnet/*` with `i2v.controlnet=False`)."""
        off = [name for name in CONDITIONINGS if name not in self.components()]
        kept = tuple(p for p in patterns if not any(p.startswith(f"{name}/") for name in off))
        if len(kept) < len(patterns):
            dropped = sorted(set(patterns) - set(kept))
            log.info("trainable globs of switched-off %s ignored: %s", off, dropped)
        if not kept:
            raise ValueError(
                f"config.trainable={tuple(patterns)} only names switched-off parts ({off}); "
                "add e.g. 'unet/*motion_modules_*'"
            )
        return kept

    def load_params(self, shardings) -> dict:
        """The motion UNet's params (`initial_unet_params`), the appearance encoder's as a copy
        of its spatial ones, the ControlNet's from its folder or from the UNet, each placed on
        its shards."""
        unet = self.initial_unet_params(shardings["unet"])
        params = {"unet": unet}
        backbone = self.backbone_params(unet)
        if self.appearance is not None:  # its own buffers: the state is donated to the step
            params["appearance"] = jax.device_put(
                spatial_params(backbone), shardings["appearance"], may_alias=False
            )
        if self.controlnet_folder is not None:
            params["controlnet"] = load_component(
                self.controlnet_folder, self.param_dtype, shardings["controlnet"]
            )[1]
        elif self.controlnet is not None:  # traced: created shard by shard from the UNet's
            unet_module = self.conditioning_backbone(self.denoiser)
            overrides = sparse_overrides(unet_module)

            def from_unet(unet_params, rng):
                _, net = controlnet_from_unet(unet_module, unet_params, rng, **overrides)
                return net

            params["controlnet"] = jax.jit(from_unet, out_shardings=shardings["controlnet"])(
                backbone, jax.random.key(self.seed)
            )
        return params

    # ---- device side

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """Min-SNR-weighted denoising loss over all frames of `[B,F,…]` clips (F = 1: images)."""
        k_vae, k_drop, k_time, k_noise = key_streams(keys, 4)
        latents = self.clean_latents(consts, batch, k_vae)  # [B,F,h,w,c]
        context, _ = self.text_context(consts, batch, k_drop)
        predict = self.predictor(params, latents, context)
        return self.denoising_loss(consts, latents, k_time, k_noise, predict)

    def predictor(
        self,
        params,
        latents,
        context,
        condition: jax.Array | None = None,
        reference_context: jax.Array | None = None,
        **unet_kwargs,
    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """`predict(noisy, timesteps)` of the UNet given the key image, the clean latent of
        frame 0 of `latents` `[B,F,h,w,c]` (its conditionings only for clips, F > 1).
        `condition` `[B,F,h,w,c']` is concatenated to the noisy latents at the UNet's input
        (not the ControlNet's); `reference_context` (default `context`) is the text the
        appearance encoder reads — the prompt's on both guidance halves, as
        `ImageToVideoPipeline` encodes the reference; `unet_kwargs` go to the UNet (e.g.
        `class_labels`)."""
        video = latents.shape[1] > 1
        key_latent = latents[:, 0]  # the clean latent of the key image
        variables = {"params": params["unet"]}
        if video and self.appearance is not None:
            text = context if reference_context is None else reference_context
            features = encode_reference(self.appearance, params["appearance"], key_latent, text)
            variables["reference"] = with_reference_scale(features, 1.0)

        def predict(noisy, timesteps):
            residuals = {}
            if video and self.controlnet is not None:
                residuals = self.control_residuals(
                    params["controlnet"], noisy, timesteps, context, key_latent
                )
            sample = noisy if condition is None else jnp.concatenate([noisy, condition], -1)
            return self.denoiser.apply(
                variables, sample, timesteps, context, **residuals, **unet_kwargs
            )

        return predict

    def control_residuals(self, controlnet_params, noisy, timesteps, context, key_latent) -> dict:
        """SparseCtrl's residuals for the UNet: the key image's latent on frame 0, zeros and a
        0 mask on the other frames (as `ImageToVideoPipeline` feeds it)."""
        mask = jnp.zeros(noisy.shape[:2], jnp.float32).at[:, 0].set(1.0)
        condition = jnp.zeros(noisy.shape, key_latent.dtype).at[:, 0].set(key_latent)
        down, mid = self.controlnet.apply(
            {"params": controlnet_params},
            noisy,
            timesteps,
            context,
            condition,
            1.0,
            conditioning_mask=mask,
        )
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def motion_unet_config(unet_folder: Path, adapter: Path | dict | None) -> dict:
    """The motion UNet's config: the folder's, or an SD UNet's merged with a motion adapter's
    (a folder, or the config of new motion modules: `new_motion_adapter`)."""
    if adapter is None:
        return read_config(unet_folder)
    adapter_config = adapter if isinstance(adapter, dict) else read_config(adapter)
    return motion_config_from_unet2d(read_config(unet_folder), adapter_config)


def motion_unet_source(config, pipeline: Path) -> tuple[Path, Path | dict | None]:
    """(unet folder, motion adapter: a folder, a new adapter's config, or None when the unet has
    its motion modules)."""
    unet_folder = pipeline / "unet"
    unet_config = read_config(unet_folder)
    kind = unet_config.get("_class_name")
    adapter = config.model.motion_adapter
    new = config.model.new_motion_modules.to_dict()
    if kind == "UNetMotionModel":
        if adapter or new:
            raise ValueError(
                f"{unet_folder} is a UNetMotionModel already; unset config.model.motion_adapter "
                "and config.model.new_motion_modules"
            )
        return unet_folder, None
    if kind != "UNet2DConditionModel":
        raise ValueError(f"{unet_folder}: a {kind}; the i2v stage needs an SD UNet to animate")
    if adapter and new:
        raise ValueError("set config.model.motion_adapter or new_motion_modules, not both")
    if new:
        return unet_folder, new_motion_adapter(unet_config, new)
    if not adapter and (pipeline / "motion_adapter").is_dir():
        adapter = pipeline / "motion_adapter"
    if not adapter:
        raise ValueError(
            f"{unet_folder} is an image UNet: set config.model.motion_adapter to a diffusers "
            "MotionAdapter folder (AnimateDiff), config.model.new_motion_modules to train new "
            "ones, or start from an AnimateDiff pipeline folder"
        )
    if not Path(adapter).is_dir():
        raise FileNotFoundError(f"config.model.motion_adapter={str(adapter)!r}: no such folder")
    return unet_folder, Path(adapter)


def new_motion_adapter(unet_config: dict, fields: dict) -> dict:
    """The MotionAdapter config of new motion modules for an SD UNet: its blocks, layers and
    norm groups, and `fields` (e.g. motion_num_attention_heads, motion_max_seq_length)."""
    return {
        "_class_name": "MotionAdapter",
        "block_out_channels": list(unet_config["block_out_channels"]),
        "motion_layers_per_block": unet_config.get("layers_per_block", 2),
        "motion_norm_num_groups": unet_config.get("norm_num_groups", 32),
        **fields,
    }


def with_new_motion_modules(motion_unet: UNetMotionModel, image_params: dict, seed: int) -> dict:
    """Motion UNet params: the image UNet's for the spatial layers, new motion modules whose
    output projections are zero (as AnimateDiff starts them), so that the motion UNet starts
    as the image model run on every frame."""
    args, kwargs = MOTION.example_inputs(motion_unet)
    init = jax.jit(lambda key: nn.meta.unbox(motion_unet.init(key, *args, **kwargs)["params"]))
    fresh = init(jax.random.key(seed))

    def merge(new: dict, image: dict, path: str) -> dict:
        out = {}
        for name, value in new.items():
            where = f"{path}/{name}".lstrip("/")
            if name.startswith("motion_modules_"):
                out[name] = jax.tree_util.tree_map_with_path(_zero_proj_out, value)
            elif isinstance(value, dict):
                out[name] = merge(value, image.get(name, {}), where)
            elif name not in image or image[name].shape != value.shape:
                raise ValueError(f"the image UNet has no param {where} of shape {value.shape}")
            else:
                out[name] = jnp.asarray(image[name], value.dtype)
        return out

    return merge(fresh, image_params, "")


def _zero_proj_out(path, value):
    names = [getattr(k, "key", "") for k in path]
    return jnp.zeros_like(value) if "proj_out" in names else value


def sparse_overrides(unet: UNetMotionModel) -> dict:
    """SparseCtrl RGB's fields: the key image's latent (+ the mask) through one conv."""
    return dict(
        sparse=True,
        conditioning_channels=unet.in_channels,
        use_simplified_condition_embedding=True,
        concat_conditioning_mask=True,
        motion_num_attention_heads=unet.motion_num_attention_heads,
        motion_max_seq_length=unet.motion_max_seq_length,
    )


def sparse_controlnet(unet: UNetMotionModel, folder: Path | None) -> SparseControlNetModel:
    """The ControlNet module: built from `unet`'s fields, or `folder`'s (a SparseCtrl RGB)."""
    if folder is None:
        return controlnet_like(unet, **sparse_overrides(unet))
    if not folder.is_dir():
        raise FileNotFoundError(f"config.i2v.controlnet_from={str(folder)!r}: no such folder")
    module, _ = build_module(read_config(folder), unet.param_dtype, where=str(folder))
    if not (
        isinstance(module, SparseControlNetModel)
        and module.use_simplified_condition_embedding
        and module.conditioning_channels == unet.in_channels
    ):
        raise ValueError(
            f"config.i2v.controlnet_from={str(folder)!r}: need a SparseControlNetModel taking "
            f"{unet.in_channels}-channel latents (SparseCtrl RGB, simplified condition embedding)"
        )
    return module.clone(dtype=unet.dtype, remat_policy=unet.remat_policy)
