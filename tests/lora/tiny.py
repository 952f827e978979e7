"""LoRAs made on the torch side for the parity tests: peft adapters with random non-zero
weights injected into tiny diffusers / transformers models, saved as diffusers writes them, and
renamed by key into the kohya and AnimateDiff-original layouts; diffusers' own loading and
fusing as the reference."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

ATTENTION = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"
RESNET_CONVS = r".*resnets\.\d+\.(conv1|conv2|conv_shortcut)"
MOTION = r".*motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
TEXT = r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)|.*mlp\.fc[12]"
# The modules the LCM-LoRA / AnimateLCM LoRA distillation scripts adapt: every linear and
# convolution of the spatial blocks (attention, proj_in / proj_out, feed-forward, resnets with
# their time projection, down/upsamplers); never the motion modules or conv_in / conv_out.
LCM_TARGETS = (
    r"(?!.*motion_modules).*(attn[12]\.(to_q|to_k|to_v|to_out\.0)|attentions\.\d+\.proj_(in|out)"
    r"|ff\.net\.(0\.proj|2)|resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)"
    r"|(down|up)samplers\.0\.conv)"
)


def lora_state(model, seed: int, **config) -> tuple[dict, LoraConfig]:
    """(peft state dict, config) of a LoRA with random lora_A and lora_B on a copy of `model`
    (`config`: LoraConfig fields, e.g. r, lora_alpha, target_modules, rank_pattern)."""
    lora_config = LoraConfig(init_lora_weights=False, **config)
    model = inject_adapter_in_model(lora_config, copy.deepcopy(model), adapter_name="made")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:  # ±, O(1/√fan_in): a delta as large as the weights' own
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(np.prod(p.shape[1:])))
    return get_peft_model_state_dict(model, adapter_name="made"), lora_config


def metadata(config: LoraConfig) -> dict:
    """What diffusers' `save_lora_weights` keeps of a LoraConfig (as peft's `to_dict`)."""
    keep = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_rslora")
    out = {k: v for k, v in config.to_dict().items() if k in keep}
    out["target_modules"] = (
        sorted(out["target_modules"])
        if isinstance(out["target_modules"], set)
        else out["target_modules"]
    )
    return out


def save_diffusers(folder: Path, unet_state=None, unet_config=None, **text) -> Path:
    """`folder/pytorch_lora_weights.safetensors` as diffusers' `save_lora_weights` writes it."""
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=unet_state,
        unet_lora_adapter_metadata=unet_config and metadata(unet_config),
        **text,
    )
    return folder / "pytorch_lora_weights.safetensors"


def kohya_key(key: str, prefix: str) -> str:
    """A peft key → kohya's: `lora_unet_<module, dots as underscores>.lora_down.weight`."""
    module, part = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", key).groups()
    return f"{prefix}_{module.replace('.', '_')}.lora_{'down' if part == 'A' else 'up'}.weight"


def save_kohya(
    path: Path,
    states: dict[str, dict],
    alphas: dict[str, float] | None = None,
    dtype: torch.dtype = torch.float32,
):
    """`states` ({kohya prefix: peft state}) renamed into one kohya file, with `.alpha` tensors
    per module where `alphas` ({peft module name: alpha}) gives one; every tensor in `dtype`."""
    out = {}
    for prefix, state in states.items():
        for key, value in state.items():
            out[kohya_key(key, prefix)] = value.to(dtype).contiguous()
        for module, alpha in (alphas or {}).items():
            if f"{module}.lora_A.weight" in state:
                name = kohya_key(f"{module}.lora_A.weight", prefix).split(".")[0]
                out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    save_file(out, str(path))
    return path


def save_lcm_lora(path: Path, model, seed: int, rank: int = 8, alpha: float = 1.0) -> Path:
    """A random LoRA on `model`'s `LCM_TARGETS` in the layout of the published few-step LoRAs
    (`latent-consistency/lcm-lora-sdv1-5` / `lcm-lora-sdxl` `pytorch_lora_weights.safetensors`,
    `wangfuyun/AnimateLCM` `AnimateLCM_sd15_t2v_lora.safetensors`): kohya's prefix and parts on
    diffusers' module names, even for SDXL (`lora_unet_down_blocks_1_attentions_0_
    transformer_blocks_0_attn1_to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`), fp16.
    Those ship rank 64 with alpha 8; here `alpha / rank` keeps that 1/8 by default."""
    state, _ = lora_state(model, seed, r=rank, lora_alpha=alpha, target_modules=LCM_TARGETS)
    modules = {key.rsplit(".lora_", 1)[0] for key in state}
    return save_kohya(path, {"lora_unet": state}, dict.fromkeys(modules, alpha), torch.float16)


def motion_layouts(state: dict) -> tuple[dict, dict]:
    """A peft motion-module LoRA → (diffusers' published layout `unet.….attn1.processor.
    to_q_lora.down.weight`, AnimateDiff's original `….temporal_transformer.….attention_blocks.0.
    processor.to_q_lora.down.weight`)."""
    published, original = {}, {}
    for key, value in state.items():
        module, proj, part = re.fullmatch(
            r"(.+)\.(to_q|to_k|to_v|to_out\.0)\.lora_(A|B)\.weight", key
        ).groups()
        leaf = f"processor.{proj.replace('.0', '')}_lora.{'down' if part == 'A' else 'up'}.weight"
        published[f"unet.{module}.{leaf}"] = value.contiguous()
        old = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", module)
        old = old.replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1")
        original[f"{old}.{leaf}"] = value.contiguous()
    return published, original


def diffusers_fused(model, files: list[tuple[Path, float]], pipeline=StableDiffusionPipeline):
    """A copy of `model` (a diffusers UNet) with the LoRA files loaded the way
    `pipe.load_lora_weights` loads them and fused at their scales."""
    model = copy.deepcopy(model)
    names = []
    for i, (path, _) in enumerate(files):
        state, alphas, meta = pipeline.lora_state_dict(
            str(path.parent),
            weight_name=path.name,
            return_lora_metadata=True,
            unet_config=model.config,
        )
        pipeline.load_lora_into_unet(
            state, alphas, model, adapter_name=f"a{i}", metadata=meta, _pipeline=None
        )
        names.append(f"a{i}")
    if len(files) == 1:
        model.fuse_lora(lora_scale=files[0][1], adapter_names=names)
    else:
        model.set_adapters(names, weights=[scale for _, scale in files])
        model.fuse_lora(lora_scale=1.0, adapter_names=names)
    return model
