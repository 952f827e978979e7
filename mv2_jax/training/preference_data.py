"""Preference pairs encoded once for the stages that learn from them (Diffusion-DPO, reward
models): what `train.py --precompute_to` stores per pair — the chosen and rejected latents
through the pipeline's VAE and the prompt's embedding (one text-encoder pass per pair, not one
per side). The batches come from `mv2_jax.data.preference_pipeline`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _latents(stage, vae_params, pixels: jax.Array) -> jax.Array:
    """`[B, (F,) H, W, 3]` in [-1, 1] → the posterior mean's diffusion latents `[B, (F,) h, w,
    C]` (deterministic, as `LatentDiffusionStage.encode_for_precompute` stores)."""
    lead = pixels.shape[: pixels.ndim - 3]
    folded = pixels.reshape(-1, *pixels.shape[-3:])
    posterior = stage.vae.apply({"params": vae_params}, folded, method="encode")
    latents = stage.vae.to_diffusion_latents(posterior.mean)
    return latents.reshape(*lead, *latents.shape[1:])


def encode_pairs_for_precompute(stage, consts, chosen, rejected, input_ids, weight) -> dict:
    """What a precomputed preference dataset stores per pair (jit-able): `chosen_latents`,
    `rejected_latents` (`[B, (F,) h, w, C]`), `prompt_embeds` `[B, L, D]`
    (+ `pooled_prompt_embeds` `[B, P]` with two text encoders) and `weight` `[B]`.

    `stage` is a `LatentDiffusionStage` (its VAE and text encoders, frozen params in
    `consts["vae"]` / `consts["text"]`); `chosen` / `rejected` are pixels `[B, (F,) H, W, 3]`
    in [-1, 1]; `input_ids` `[B, L]` (the pipeline's tokenizer) or `[B, n_encoders, L]`
    (`stage.token_ids(captions)`)."""
    both = _latents(stage, consts["vae"], jnp.concatenate([chosen, rejected]))
    ids = input_ids[:, None] if input_ids.ndim == 2 else input_ids
    embeds, pooled = stage.encode_text(consts["text"], ids)
    b = chosen.shape[0]
    out = {
        "chosen_latents": both[:b],
        "rejected_latents": both[b:],
        "prompt_embeds": embeds,
        "weight": jnp.asarray(weight, jnp.float32),
    }
    if pooled is not None:
        out["pooled_prompt_embeds"] = pooled
    return out


def preference_encoder(stage, consts):
    """`encode_fn(batch) -> dict of numpy` for `mv2_jax.data.precompute_dataset` over
    `make_preference_iterator` batches: tokenises the captions with the stage's tokenizers
    and runs `encode_pairs_for_precompute` under one jit."""
    encode = jax.jit(lambda c, *arrays: encode_pairs_for_precompute(stage, c, *arrays))

    def encode_fn(batch: dict) -> dict:
        ids = stage.token_ids(batch["caption"])
        arrays = (batch["chosen"], batch["rejected"], ids, batch["weight"])
        return jax.device_get(encode(consts, *arrays))

    return encode_fn
