"""PyTorch → Flax mapping for diffusers' `UNet2DConditionModel`."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from mv2_jax.models.unet import UNet2DConditionModel
from mv2_jax.weights.mapping import Hint, Rule
from mv2_jax.weights.registry import Family, register

# Keys that differ from the mechanical `a.0.b` → `a_0/b` rule.
TRANSFORMER_RULES = (Rule(r"(.*)\.ff\.net\.0\.proj\.(weight|bias)", r"\1.ff.net_0_proj.\2"),)

# The guidance-scale embedding of LCM-distilled UNets exists only with `time_cond_proj_dim`.
TIME_COND_PROJ_HINT = Hint(
    r"^time_embedding[./]cond_proj[./]",
    "  time_embedding.cond_proj is the guidance-scale embedding of guidance-distilled (LCM) "
    "UNets, present exactly when config.json sets time_cond_proj_dim: a checkpoint whose "
    'time_embedding.cond_proj.weight has shape [C, D] needs "time_cond_proj_dim": D in '
    "config.json, and a config with time_cond_proj_dim needs that tensor. Use the config.json "
    "that came with the weights.",
)


def unet_example_inputs(unet: UNet2DConditionModel) -> tuple[tuple, dict]:
    """The smallest inputs that create every param of `unet`."""
    size = 2 ** (len(unet.down_block_types) - 1)
    cross = unet.cross_attention_dim
    cross = cross[0] if isinstance(cross, Sequence) else cross
    ip_adapter = unet.encoder_hid_dim_type == "ip_image_proj"
    context_dim = cross if ip_adapter else (unet.encoder_hid_dim or cross)
    kwargs = {}
    if unet.addition_embed_type == "text_time":
        time_ids = jnp.zeros((1, 6))
        text_dim = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": jnp.zeros((1, text_dim)),
            "time_ids": time_ids,
        }
    if ip_adapter:  # encoder_hid_dim is the image embedding width (diffusers' ImageProjection)
        added = kwargs.setdefault("added_cond_kwargs", {})
        added["image_embeds"] = jnp.zeros((1, unet.encoder_hid_dim))
    if unet.class_embed_type is not None or unet.num_class_embeds is not None:
        kwargs["class_labels"] = _example_class_labels(unet)
    args = (
        jnp.zeros((1, size, size, unet.in_channels)),
        jnp.zeros((1,)),
        jnp.zeros((1, 1, context_dim)),
    )
    return args, kwargs


def _example_class_labels(unet: UNet2DConditionModel):
    time_dim, _ = unet._time_embed_dims()
    kind = unet.class_embed_type
    if kind is None:
        return jnp.zeros((1,), jnp.int32)
    if kind == "timestep":
        return jnp.zeros((1,))
    if kind == "identity":
        return jnp.zeros((1, time_dim))
    return jnp.zeros((1, unet.projection_class_embeddings_input_dim))


UNET = register(
    Family(
        build=lambda config, dtype: UNet2DConditionModel.from_config(
            config, dtype=dtype, param_dtype=dtype
        ),
        example_inputs=unet_example_inputs,
        rules=TRANSFORMER_RULES,
        hints=(TIME_COND_PROJ_HINT,),
    ),
    "UNet2DConditionModel",
)
