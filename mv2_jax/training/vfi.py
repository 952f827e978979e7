"""The frame-interpolation stage for the trainer: a `FrameInterpolator` (generator) and a
PatchGAN discriminator trained together on clips the stage makes itself
(`mv2_jax.data.motion_clips`), with no pipeline folder and no dataset on disk.

One optimizer, simultaneous updates. The params are `{"generator": …, "discriminator": …}` and
the loss is `L_G + L_D`, where the generator's adversarial term reads the discriminator's params
through `stop_gradient` and the discriminator's loss reads the generated frames through
`stop_gradient`: the gradient of the sum is then exactly ∇_G L_G for the generator and ∇_D L_D
for the discriminator, and one AdamW step updates both (with one global-norm clip over both).

L_G = charbonnier(frame) + coarse_weight · Σ charbonnier(fused frame of each earlier block)
      + census_weight · census(frame) + flow_weight · mean over blocks charbonnier(flow, true)
      + adv_weight · [step ≥ adv_start_step] · hinge_G,
L_D = hinge_D on (frame0, frame_t, frame1) real vs (frame0, generated, frame1) fake triplets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.models.config import module_from_config
from mv2_jax.models.discriminator import PatchDiscriminator
from mv2_jax.models.vfi import FrameInterpolator
from mv2_jax.training import vfi_losses
from mv2_jax.training.stage import FreshModelStage, dtype_of


@dataclass(kw_only=True)
class FrameInterpolationStage(FreshModelStage):
    uses_config_data: ClassVar[bool] = False  # makes its clips (`make_data_iterator`)

    generator: FrameInterpolator
    discriminator: PatchDiscriminator
    settings: Any  # the config's `vfi` section
    batch_size: int
    crop: int

    @classmethod
    def from_config(
        cls, config, pipeline: Path | None, mesh, workdir=None
    ) -> FrameInterpolationStage:
        """The stage of `config` (`pipeline` is unused: the model comes from `config.vfi`)."""
        v = config.vfi
        compute, params = dtype_of(config.compute_dtype), dtype_of(config.param_dtype)
        generator = module_from_config(
            FrameInterpolator, v.model.to_dict(), dtype=compute, param_dtype=params
        )
        discriminator = PatchDiscriminator(
            tuple(v.discriminator_channels), dtype=compute, param_dtype=params
        )
        crop = config.data.height
        if config.data.width != crop:
            raise ValueError(f"vfi trains on square crops; got data {crop}×{config.data.width}")
        generator.check_size(crop, crop)
        return cls(
            generator=generator,
            discriminator=discriminator,
            param_dtype=params,
            settings=v,
            batch_size=config.batch_size,
            crop=crop,
            seed=config.seed,
        )

    # ---- the params that train

    def _example(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        m = self.generator.size_multiple
        frame = jnp.zeros((1, max(m, 16), max(m, 16), 3))
        return frame, frame, jnp.full((1,), 0.5)

    def _init(self, key: jax.Array) -> dict:
        frame0, frame1, t = self._example()
        triplet = jnp.concatenate([frame0, frame0, frame1], axis=-1)
        k_gen, k_disc = jax.random.split(key)
        return {
            "generator": self.generator.init(k_gen, frame0, frame1, t)["params"],
            "discriminator": self.discriminator.init(k_disc, triplet)["params"],
        }

    # ---- data (host side)

    def make_data_iterator(self, config) -> Iterator[dict]:
        """The stage's own endless, checkpointable stream of training triplets."""
        from mv2_jax.data.motion_clips import MotionClipSource, motion_clip_iterator

        source = MotionClipSource(
            size=self.crop,
            max_motion=float(self.settings.max_motion),
            seed=config.seed,
            object_probability=float(self.settings.object_probability),
            num_clips=self.settings.num_clips,
        )
        return motion_clip_iterator(
            source,
            global_batch_size=config.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            read_threads=self.settings.read_threads,
            prefetch=config.data.prefetch,
        )

    def prepare(self, batch: dict) -> dict:
        """Frames and t as float32; the global `position` of each example and the step it
        belongs to (`train_step`, which switches the adversarial term on)."""
        keys = ("frame0", "frame1", "frame_t", "flow", "t")
        out = {k: np.asarray(batch[k], np.float32) for k in keys}
        position = np.asarray(batch["position"], np.int64)
        out["position"] = position.astype(np.uint32)
        out["train_step"] = (position // self.batch_size).astype(np.int32)
        return out

    # ---- the loss (inside the jitted step)

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        s = self.settings
        frame0, frame1, target = batch["frame0"], batch["frame1"], batch["frame_t"]
        frame, aux = self.generator.apply(
            {"params": params["generator"]}, frame0, frame1, batch["t"], return_aux=True
        )
        l1 = vfi_losses.charbonnier(frame, target)
        coarse = sum(vfi_losses.charbonnier(m, target) for m in aux["merged"][:-1])
        census = vfi_losses.census(frame, target)
        # The clips' true flows teach every block's flow directly (as RIFE's privileged teacher
        # does): far faster than finding large motions through the warp's local gradients.
        flow_errors = [vfi_losses.charbonnier(f, batch["flow"]) for f in aux["flows"]]
        flow = sum(flow_errors) / len(flow_errors)

        def judge(disc_params, middle):
            triplet = jnp.concatenate([frame0, middle, frame1], axis=-1)
            return self.discriminator.apply({"params": disc_params}, triplet)

        adv = vfi_losses.hinge_generator(
            judge(jax.lax.stop_gradient(params["discriminator"]), frame)
        )
        adv_on = jnp.max(batch["train_step"] >= s.adv_start_step).astype(jnp.float32)
        g_loss = l1 + s.coarse_weight * coarse + s.census_weight * census + s.flow_weight * flow
        g_loss = g_loss + s.adv_weight * adv_on * adv
        fake = jax.lax.stop_gradient(frame)
        d_loss = vfi_losses.hinge_discriminator(
            judge(params["discriminator"], target), judge(params["discriminator"], fake)
        )
        metrics = {
            "l1": l1,
            "census": census,
            "flow": flow_errors[-1],
            "adv": adv,
            "d_loss": d_loss,
            "g_loss": g_loss,
            "psnr": vfi_losses.psnr(frame, target),
        }
        return g_loss + d_loss, metrics


def export_vfi(workdir: str | Path, out: str | Path, step: int | None = None, ema: bool = True):
    """The generator of a vfi run (EMA by default) as a `FrameInterpolator` component folder
    (`config.json` + `diffusion_pytorch_model.safetensors`) that `load_component` reads."""
    from mv2_jax.training.checkpoint import restore_params, run_config
    from mv2_jax.weights.new_folder import new_folder
    from mv2_jax.weights.vfi import write_vfi_folder

    config = run_config(workdir, "vfi")
    params = restore_params(workdir, step, ema)["generator"]
    model = module_from_config(FrameInterpolator, config.vfi.model.to_dict())
    with new_folder(out) as partial:
        write_vfi_folder(partial, model, params)
    return Path(out)
