"""IP-Adapter checkpoints in the original layout (`ip-adapter_sd15.safetensors` / `.bin`) → a
UNet (2D or motion) with image-prompt cross-attention, as diffusers' `load_ip_adapter` does.

The file holds `image_proj.{proj,norm}.*` (the image projection) and `ip_adapter.{i}.to_k_ip/
to_v_ip.weight`, numbered over the UNet's attention processors in diffusers' order
(`unet.attn_processors`: down blocks, up blocks, then the mid block): the even `i` are the
self-attentions, which have no adapter weights, so the `k`-th cross-attention is `2k + 1`.
Motion modules' attentions are not counted (diffusers skips them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mv2_jax.models.unet import UNet2DConditionModel
from mv2_jax.weights.mapping import Rule, WeightMismatchError, convert_state_dict
from mv2_jax.weights.registry import family_of, param_shapes
from mv2_jax.weights.safetensors_io import read_safetensors

# diffusers' `ImageProjection` for the basic IP-Adapter: 4 tokens per image.
NUM_TOKENS = 4
_PROJECTION = "encoder_hid_proj.image_projection_layers.0"
IMAGE_PROJ_RULES = (
    Rule(r"image_proj\.proj\.(weight|bias)", rf"{_PROJECTION}.image_embeds.\1"),
    Rule(r"image_proj\.norm\.(weight|bias)", rf"{_PROJECTION}.norm.\1"),
)
_STAGE_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}  # diffusers' module order
_ATTN2 = re.compile(
    r"(down_blocks|up_blocks|mid_block)(?:_(\d+))?/attentions_(\d+)/transformer_blocks_(\d+)/attn2"
)


def read_ip_adapter(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of an IP-Adapter file, keyed `image_proj.…` / `ip_adapter.…`. `.safetensors`
    are read with numpy; `.bin` only through `torch.load(weights_only=True)` (no unpickling)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return dict(read_safetensors(path))
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{path}: reading .bin IP-Adapter files needs torch; install it, or convert the "
                "file to .safetensors"
            ) from e
        nested = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(nested, dict) or not {"image_proj", "ip_adapter"} <= set(nested):
            raise ValueError(f"{path}: not an IP-Adapter file (no image_proj / ip_adapter dicts)")
        return {
            f"{group}.{key}": tensor.float().numpy()
            for group in ("image_proj", "ip_adapter")
            for key, tensor in nested[group].items()
        }
    raise ValueError(f"{path}: expected an IP-Adapter .safetensors or .bin file")


def cross_attention_paths(shapes) -> list[str]:
    """Flax paths of the UNet's spatial cross-attentions (`…/attn2`) in diffusers'
    `attn_processors` order, from a param tree that has IP-Adapter params."""
    found = set()
    for path in traverse_util.flatten_dict(dict(shapes)):
        joined = "/".join(path)
        match = _ATTN2.match(joined)
        if match and "/processor/" in joined:
            found.add((match.group(0), match.groups()))

    def order(item):
        stage, block, attention, layer = item[1]
        return _STAGE_ORDER[stage], int(block or 0), int(attention), int(layer)

    return [path for path, _ in sorted(found, key=order)]


def _canonical(flax_path: str) -> str:
    """`down_blocks_0/attentions_1` → `down_blocks.0.attentions.1` (diffusers' key form)."""
    return ".".join(re.sub(r"_(\d+)$", r".\1", part) for part in flax_path.split("/"))


def load_ip_adapter(
    path: str | os.PathLike, unet_module: UNet2DConditionModel, unet_params: dict
) -> tuple[UNet2DConditionModel, dict]:
    """`(module, params)`: `unet_module` rebuilt with the IP-Adapter of `path` (the basic
    "ip-adapter" layout, e.g. ip-adapter_sd15) and `unet_params` plus the adapter's params
    (`params["encoder_hid_proj"]` is the image projection; `…/attn2/processor/to_{k,v}_ip_0` the
    image keys / values). Works for `UNet2DConditionModel` and `UNetMotionModel`. Call the
    result with `added_cond_kwargs={"image_embeds": [B, D_img], "ip_adapter_scale": s}` (CLIP
    `image_embeds`; `s` a traced scalar or `[B]`, 0 = no adapter). Strict: every adapter param
    filled, every tensor used, else `WeightMismatchError` lists what does not fit."""
    state = read_ip_adapter(path)
    if unet_module.encoder_hid_dim_type is not None:
        raise NotImplementedError(
            f"the UNet already has encoder_hid_dim_type={unet_module.encoder_hid_dim_type!r}; "
            "load the IP-Adapter into the UNet without an adapter (or text projection)"
        )
    if "image_proj.proj.weight" not in state:
        if any(k.startswith(("image_proj.proj.", "image_proj.latents")) for k in state):
            raise NotImplementedError(
                f"{path}: an IP-Adapter Plus / Full Face / FaceID image projection; only the "
                "basic layout (image_proj.proj + image_proj.norm, e.g. ip-adapter_sd15) is "
                "supported"
            )
        raise WeightMismatchError(str(path), ["image_proj.proj.weight"], [], [])
    module = unet_module.clone(
        encoder_hid_dim_type="ip_image_proj",
        encoder_hid_dim=int(state["image_proj.proj.weight"].shape[1]),
        ip_adapter_num_tokens=NUM_TOKENS,
    )
    shapes = param_shapes(module, family_of(unet_module))
    base = traverse_util.flatten_dict(dict(unet_params))
    flat = traverse_util.flatten_dict(dict(shapes))
    stray = [p for p in base if p not in flat]
    if stray or any(p not in base and not _is_adapter_param(p) for p in flat):
        raise ValueError(
            "unet_params do not belong to unet_module (e.g. "
            f"{'/'.join(stray[0]) if stray else 'missing base params'}); pass the pair that "
            "load_component returned"
        )
    adapter_shapes = traverse_util.unflatten_dict({p: s for p, s in flat.items() if p not in base})
    rules, original = list(IMAGE_PROJ_RULES), {}
    for k, attn2 in enumerate(cross_attention_paths(adapter_shapes)):
        key_id, target = 2 * k + 1, _canonical(attn2)
        rules.append(
            Rule(
                rf"ip_adapter\.{key_id}\.to_(k|v)_ip\.weight",
                rf"{target}.processor.to_\1_ip.0.weight",
            )
        )
        for kv in "kv":
            original[f"{attn2}/processor/to_{kv}_ip_0/kernel"] = (
                f"ip_adapter.{key_id}.to_{kv}_ip.weight"
            )
    try:
        adapter = convert_state_dict(
            state, adapter_shapes, rules, what=str(path), place=lambda p, v: jnp.asarray(v)
        )
    except WeightMismatchError as e:
        named = [f"{m} (from {original[m]})" if m in original else m for m in e.missing]
        raise WeightMismatchError(
            str(path),
            named,
            e.unexpected,
            e.misshaped,
            hint="  Check that the file is a complete basic IP-Adapter made for this UNet (same "
            "cross_attention_dim and block widths, e.g. ip-adapter_sd15 for SD1.5).",
        ) from None
    merged = {**base, **traverse_util.flatten_dict(adapter)}
    return module, traverse_util.unflatten_dict(merged)


def _is_adapter_param(path: tuple[str, ...]) -> bool:
    return path[0] == "encoder_hid_proj" or "processor" in path
