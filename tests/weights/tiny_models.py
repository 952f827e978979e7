"""Tiny random diffusers / transformers models and pipelines for the weights tests, their original
(LDM) single-file layout, and the converter CLI. No downloads; needs torch, diffusers, transformers.

The LDM key names are derived by inverting diffusers' single-file key mapping for these tiny
configs (`ldm_checkpoint`); `check_ldm_inversion` runs diffusers' own forward converters on the
result and asserts they give back exactly the diffusers state dicts, so the inversion is proven.
"""

from __future__ import annotations

import importlib.util
import json
import re
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tests.reference import randomize_

CLI = Path(__file__).resolve().parents[2] / "convert" / "to_flax.py"


def load_cli():
    """`convert/to_flax.py` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("to_flax", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNET = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=8,
)
# A tiny diffusers UNetMotionModel (AnimateDiff-like) config.
MOTION_UNET = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    norm_num_groups=8,
    cross_attention_dim=24,
    motion_max_seq_length=8,
    num_attention_heads=2,
    motion_num_attention_heads=2,
    layers_per_block=1,
)
VAE = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
# A legacy-style text config (eos_token_id=2, as SD1.x ships) over the tokenizer's ids.
CLIP = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def tiny_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    return randomize_(UNet2DConditionModel(**{**UNET, **overrides}), seed)


def tiny_vae(seed: int = 1) -> AutoencoderKL:
    return randomize_(AutoencoderKL(**VAE), seed)


def tiny_clip(seed: int = 2) -> CLIPTextModel:
    return randomize_(CLIPTextModel(CLIPTextConfig(**CLIP)), seed)


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over lowercase letters, digits and a few merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'")
    vocab = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    vocab += ["ph", "ot", "oto</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\np h\no t\not o</w>\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def tiny_pipeline(folder: Path) -> StableDiffusionPipeline:
    """A tiny random SD1.x-style pipeline, saved to `folder` (model_index.json layout)."""
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_clip(),
        tokenizer=tiny_tokenizer(folder.parent / f"{folder.name}_vocab"),
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


# ---------------------------------------------------------------- LDM layout (inverse mapping)

# diffusers' `update_unet_resnet_ldm_to_diffusers` renames, read backwards.
_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"))


def _resnet(rest: str) -> str:
    head, leaf = rest.split(".", 1)
    return f"{dict(_RESNET).get(head, head)}.{leaf}"


def unet_key_to_ldm(key: str, config: dict) -> str:
    """The LDM name of a diffusers UNet key (SD1.x/2.x layout, int `layers_per_block`).
    LDM numbers blocks flat: input_blocks 1… hold each level's resnets (`.0`) and attentions
    (`.1`), then its downsampler (`.0.op`); output_blocks likewise, L+1 per level."""
    per_level = config["layers_per_block"] + 1
    flat = {d: l for d, l in sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    if key in flat:
        return flat[key]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + block * per_level + j
        return (
            f"input_blocks.{i}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{i}.1.{rest}"
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * per_level + per_level - 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = block * per_level + j
        return (
            f"output_blocks.{i}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"output_blocks.{i}.1.{rest}"
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        # After the attentions when the level has them (`.2`), else right after the resnet.
        slot = 2 if config["up_block_types"][block].startswith("CrossAttn") else 1
        return f"output_blocks.{block * per_level + per_level - 1}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def vae_key_to_ldm(key: str, n_blocks: int) -> str:
    """The LDM name of a diffusers VAE key; LDM numbers decoder levels bottom-up."""
    flat = {d: l for d, l in sfu.DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    if key in flat:
        return flat[key]
    key = key.replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.*)", key):
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+)(\.0)?\.(.*)", key):
        name = "proj_out" if m[2] == "to_out" else dict(_VAE_ATTENTION)[m[2]]
        return f"{m[1]}.mid.attn_1.{name}.{m[4]}"
    raise KeyError(f"no LDM name for VAE key {key}")


def ldm_checkpoint(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights as one SD1.x LDM state dict (what `v1-5-pruned.safetensors` holds).
    LDM stores the VAE attention projections as 1×1 convolutions."""
    out = {}
    unet_config = dict(pipe.unet.config)
    for key, value in pipe.unet.state_dict().items():
        out[sfu.LDM_UNET_KEY + unet_key_to_ldm(key, unet_config)] = value.clone()
    n_blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        ldm = vae_key_to_ldm(key, n_blocks)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and "norm" not in ldm:
            value = value[:, :, None, None]
        out["first_stage_model." + ldm] = value.clone().contiguous()
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers ≥ 5 names CLIPTextModel keys without the `text_model.` of LDM files.
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out["cond_stage_model.transformer." + key] = value.clone()
    return out


def check_ldm_inversion(checkpoint: dict, pipe: StableDiffusionPipeline) -> None:
    """diffusers' forward converters must recover every tensor of the pipeline from
    `checkpoint` under its diffusers name: then `ldm_checkpoint` is their exact inverse."""
    vae = dict(pipe.vae.config)
    pairs = (
        (sfu.convert_ldm_unet_checkpoint(checkpoint, dict(pipe.unet.config)), pipe.unet),
        (sfu.convert_ldm_vae_checkpoint(checkpoint, vae), pipe.vae),
    )
    for converted, model in pairs:
        expected = model.state_dict()
        assert set(converted) == set(expected)
        for key, value in expected.items():
            assert torch.equal(converted[key], value), key
    clip = {
        k.removeprefix("text_model."): v
        for k, v in sfu.convert_ldm_clip_checkpoint(checkpoint).items()
    }
    expected = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    assert set(clip) == set(expected)
    for key, value in expected.items():
        assert torch.equal(clip[key], value), key
