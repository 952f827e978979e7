"""Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference
Optimization", arXiv:2311.12908, eq. 14): tune the T2I UNet or the I2V motion UNet on pairs of
samples of one prompt, one preferred ("chosen", x^w) and one not ("rejected", x^l).

Both latents of a pair are noised at one timestep t with one noise ε; the loss is

    L = −log σ(−β/2 · [(‖ε−ε_θ(x^w_t)‖² − ‖ε−ε_ref(x^w_t)‖²)
                       − (‖ε−ε_θ(x^l_t)‖² − ‖ε−ε_ref(x^l_t)‖²)])

with ‖·‖² the mean over a sample's elements (not the sum) and ε the configured target (ε, v or
x₀). The paper's β·T·ω(λ_t) is folded into one constant, β/2 on the per-element mean, as in the
authors' training script — so `dpo.beta` = 5000 is the paper's SD1.5 setting — and ω(λ_t) is 1
(no min-SNR weights). The reference ε_ref is the starting model, frozen: with LoRA
(`config.model.lora`) the same params with the adapter off (no second copy); with full
fine-tuning a copy of the params that train (frozen ones are shared), sharded like them.

This is the run's stage when the config has a `dpo` section (configs/dpo.py); it wraps the
stage of `config.stage` ("t2i" or "i2v"), whose text encoding, VAE, caption dropout and UNet
call it reuses, so sharding, LoRA, checkpoints and exact resume are the trainer's as for any
stage. An optional SFT term (`dpo.sft_weight`) adds the plain denoising error of the chosen
sample; each pair's `weight` multiplies its loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.training import losses
from mv2_jax.training.i2v import ImageToVideoStage
from mv2_jax.training.optim import merge_params, split_params, trainable_paths
from mv2_jax.training.stage import key_streams
from mv2_jax.training.t2i import TextToImageStage
from mv2_jax.training.tuning import TunedModelStage

DPO_STAGES = ("t2i", "i2v")  # the stages whose model Diffusion-DPO tunes
SIDES = ("chosen", "rejected")


@dataclass(frozen=True)
class DpoSettings:
    """`config.dpo`: β (the KL penalty's inverse strength; β·T·ω(λ_t) of eq. 14 folded into
    β/2, see the module docstring) and the weight of the SFT term on the chosen sample."""

    beta: float
    sft_weight: float


def dpo_settings(config) -> DpoSettings:
    """`config.dpo`, checked: the stage it wraps and what the loss assumes."""
    dpo = config.dpo
    if config.stage not in DPO_STAGES:
        raise ValueError(
            f"config.stage={config.stage!r} with a dpo section: Diffusion-DPO tunes the "
            f"{DPO_STAGES} stages' UNets"
        )
    if not dpo.beta > 0:
        raise ValueError(f"dpo.beta={dpo.beta}: must be > 0 (the paper uses 5000 for SD1.5)")
    if dpo.sft_weight < 0:
        raise ValueError(f"dpo.sft_weight={dpo.sft_weight}: must be ≥ 0 (0: no SFT term)")
    if config.diffusion.min_snr_gamma > 0:
        raise ValueError(
            f"diffusion.min_snr_gamma={config.diffusion.min_snr_gamma}: Diffusion-DPO weighs "
            "every timestep alike (ω(λ_t) = 1); set it to 0"
        )
    return DpoSettings(float(dpo.beta), float(dpo.sft_weight))


def per_example_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """`[B]` mean over each example's elements of `(prediction − target)²`, in float32."""
    err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    return err.reshape(err.shape[0], -1).mean(axis=1)


def pairs(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """`[B,…]` and `[B,…]` → `[2B,…]`, each pair's samples beside each other (chosen₀,
    rejected₀, chosen₁, …): with the batch split over devices, each device's pairs stay on it.
    Concatenating the sides instead (all chosen, then all rejected) moved the latents across
    the mesh, an all-reduce of the whole batch's latents (160 MiB a step for the paper-size I2V
    on 64 devices; benchmarks/plan.py, issue 23)."""
    return jnp.stack([chosen, rejected], axis=1).reshape(-1, *chosen.shape[1:])


def diffusion_dpo_loss(
    policy_errors: jax.Array,
    reference_errors: jax.Array,
    weight: jax.Array,
    settings: DpoSettings,
) -> tuple[jax.Array, dict]:
    """(loss, metrics) of eq. 14 from the per-example denoising errors `[2B]` of the policy and
    the reference, pair by pair as `pairs` lays them out (chosen₀, rejected₀, chosen₁, …), and
    the pairs' weights `[B]`.

    `reward_margin` is the implicit reward of the chosen sample minus the rejected one's
    (the logit inside σ); `implicit_accuracy` the fraction of pairs where it is > 0, i.e. where
    the policy's chosen-vs-rejected margin beats the reference's (0 at step 0, where they tie).
    """
    policy_w, policy_l = policy_errors[0::2], policy_errors[1::2]
    reference_w, reference_l = reference_errors[0::2], reference_errors[1::2]
    scale = 0.5 * settings.beta
    reward_w = -scale * (policy_w - reference_w)
    reward_l = -scale * (policy_l - reference_l)
    margin = reward_w - reward_l
    dpo = jnp.mean(weight * -jax.nn.log_sigmoid(margin))
    metrics = {
        "dpo_loss": dpo,
        "implicit_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
        "reward_margin": jnp.mean(margin),
        "reward_chosen": jnp.mean(reward_w),
        "reward_rejected": jnp.mean(reward_l),
        "mse_policy_chosen": jnp.mean(policy_w),
        "mse_policy_rejected": jnp.mean(policy_l),
        "mse_reference_chosen": jnp.mean(reference_w),
        "mse_reference_rejected": jnp.mean(reference_l),
    }
    loss = dpo
    if settings.sft_weight:
        sft = jnp.mean(weight * policy_w)
        metrics["sft_loss"] = sft
        loss = dpo + settings.sft_weight * sft
    return loss, dict(metrics, loss=loss)


@dataclass
class PreferenceStage(TunedModelStage):
    """The `TrainingStage` of a Diffusion-DPO run: `inner` is config.stage's stage (or the
    `LoraStage` around it); `model` the T2I / I2V stage inside, whose UNet call is the policy's
    and the reference's (`mv2_jax.training.tuning`)."""

    needs_pipeline: ClassVar[bool] = True
    uses_config_data: ClassVar[bool] = False  # preference pairs (`make_data_iterator`)

    settings: DpoSettings
    consts: dict  # the model's, and "reference": the starting values of the params that train

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None) -> PreferenceStage:
        """The stage of `config` from the `pipeline` folder; for full fine-tuning the frozen
        reference is loaded here, placed on the params' shards of `mesh`."""
        settings = dpo_settings(config)
        fields = cls.build_inner(config, pipeline, mesh, workdir)
        stage = cls(**fields, settings=settings, consts=dict(fields["model"].consts))
        if stage.lora is None:
            rules = tuple(tuple(rule) for rule in config.sharding_rules)
            stage.consts["reference"] = stage.reference_params(
                stage.param_shardings(mesh, rules), config.trainable
            )
        return stage

    def reference_params(self, shardings, trainable_globs) -> dict:
        """Full fine-tuning's frozen reference: the starting values of the params that train
        (the frozen ones are the policy's own at every step), on their `shardings`."""
        start = self.load_params(shardings)
        paths = trainable_paths(start, self.trainable_patterns(trainable_globs))
        return split_params(start, paths)[0]

    def policy_and_reference(self, params, consts) -> tuple[dict, dict]:
        """The model's params as the policy (LoRA fused in) and as the frozen reference."""
        lora = self.lora
        if lora is None:
            return params, merge_params(consts["reference"], params)
        return lora.adapted(params), lora.adapter_off(params)

    # ---- data

    def make_data_iterator(self, config) -> Iterator[dict]:
        """The preference pairs of `config.data`: `preference_dir` or `precomputed_dir`
        (`mv2_jax.data.preference_pipeline`); the prompts are tokenised in `prepare`."""
        from mv2_jax.data.preference_pipeline import preference_iterator

        return preference_iterator(config)

    def prepare(self, batch: dict) -> dict:
        """A pair batch (see `mv2_jax.data.preferences`) → arrays: `{chosen,rejected}_pixels`
        (the model's `prepare_pixels`) or `{chosen,rejected}_latents`; `input_ids`
        `[B, n_encoders, L]` or the precomputed `context` (and `pooled`); `weight` `[B]`."""
        out = {}
        for side in SIDES:
            if f"{side}_latents" in batch:
                out[f"{side}_latents"] = np.asarray(batch[f"{side}_latents"], np.float32)
            elif side in batch:
                pixels = np.asarray(batch[side], np.float32)
                if isinstance(self.model, ImageToVideoStage) and pixels.ndim != 5:
                    raise ValueError(
                        f"{side} {pixels.shape}: Diffusion-DPO of the i2v stage tunes on video "
                        "pairs [B, F, H, W, 3]; image pairs tune the t2i stage"
                    )
                out[f"{side}_pixels"] = self.model.prepare_pixels(pixels)
            else:
                raise ValueError(
                    f"a preference batch without {side!r} or {side + '_latents'!r} (keys: "
                    f"{sorted(batch)}); build the pairs with `python -m mv2_jax.data.build "
                    "preferences`"
                )
        if "prompt_embeds" in batch:
            out["context"] = np.asarray(batch["prompt_embeds"], np.float32)
            if "pooled_prompt_embeds" in batch:
                out["pooled"] = np.asarray(batch["pooled_prompt_embeds"], np.float32)
        elif "input_ids" in batch:
            out["input_ids"] = self._token_ids(np.asarray(batch["input_ids"], np.int32))
        else:
            out["input_ids"] = self.model.token_ids(batch["prompt"])
        size = len(out["chosen_latents" if "chosen_latents" in out else "chosen_pixels"])
        out["weight"] = np.asarray(batch.get("weight", np.ones(size)), np.float32)
        if "position" in batch:  # names each pair's noise (mv2_jax.training.step)
            out["position"] = np.asarray(batch["position"], np.int64).astype(np.uint32)
        return out

    def _token_ids(self, ids: np.ndarray) -> np.ndarray:
        encoders = len(self.model.tokenizers)
        if ids.ndim == 2:
            ids = ids[:, None]
        if ids.shape[1] != encoders:
            raise ValueError(
                f"input_ids {ids.shape}: the model has {encoders} text encoders; give one row "
                "of token ids per encoder ([B, n, L]) or the prompts as text"
            )
        return ids

    # ---- device side

    def encode_for_precompute(self, consts, batch) -> dict:
        """What a precomputed preference dataset stores per pair (`train.py --precompute_to`,
        `mv2_jax.training.preference_data`): both sides' latents, the prompt's embeddings and
        the weight."""
        from mv2_jax.training.preference_data import encode_pairs_for_precompute

        chosen, rejected = (batch[f"{side}_pixels"] for side in SIDES)
        return encode_pairs_for_precompute(
            self.model, consts, chosen, rejected, batch["input_ids"], batch["weight"]
        )

    def clean_latents(self, consts, batch, side: str, keys) -> jax.Array:
        """The clean latents of one side of the pairs: precomputed, else its pixels through the
        VAE; `[B,h,w,c]` for T2I, `[B,F,h,w,c]` for I2V."""
        source = {"latents": batch[f"{side}_latents"]} if f"{side}_latents" in batch else {
            "pixels": batch[f"{side}_pixels"]
        }  # fmt: skip
        latents = self.model.clean_latents(consts, source, keys)
        if isinstance(self.model, TextToImageStage) and latents.ndim == 5:
            latents = latents[:, 0]  # precomputed images `[B,1,h,w,c]`
        return latents

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """Eq. 14 on one (micro-)batch of pairs, one PRNG key per pair: both samples of a pair
        share the timestep, the noise and the (caption-dropped or not) prompt."""
        k_chosen, k_rejected, k_drop, k_time, k_noise = key_streams(keys, 5)
        model = self.model
        chosen = self.clean_latents(consts, batch, "chosen", k_chosen)
        rejected = self.clean_latents(consts, batch, "rejected", k_rejected)
        text = {k: batch[k] for k in ("context", "pooled", "input_ids") if k in batch}
        context, pooled = model.text_context(consts, text, k_drop)

        alphas_cumprod = consts["alphas_cumprod"]
        timesteps = losses.per_example_timesteps(k_time, alphas_cumprod.shape[0])
        noise = losses.per_example_noise(k_noise, chosen.shape[1:], model.diffusion.offset_noise)

        def twice(x):  # one copy for each sample of a pair, beside each other
            return None if x is None else jnp.repeat(x, 2, axis=0)

        latents = pairs(chosen, rejected)
        timesteps = twice(timesteps)
        noisy, target = losses.noisy_and_target(
            latents, twice(noise), timesteps, alphas_cumprod, model.prediction_type
        )
        text_kwargs = {} if pooled is None else {"pooled": twice(pooled)}

        def errors(unet_params):
            predict = model.predictor(unet_params, latents, twice(context), **text_kwargs)
            return per_example_mse(predict(noisy, timesteps), target)

        policy, reference = self.policy_and_reference(params, consts)
        reference_errors = jax.lax.stop_gradient(errors(reference))
        return diffusion_dpo_loss(errors(policy), reference_errors, batch["weight"], self.settings)
