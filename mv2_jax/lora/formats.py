"""LoRA file layouts → `LoraAdapter`, as tables of key forms.

- diffusers / peft (`save_lora_weights`): `unet.<module>.lora_A.weight` / `.lora_B.weight`,
  `text_encoder.…`, `text_encoder_2.…`; alphas in the safetensors metadata
  (`lora_adapter_metadata`: `unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`) or as
  `<module>.alpha` tensors; none means alpha = rank, as diffusers reads it.
- older diffusers: `<module>.lora.down.weight`, `<module>.lora_linear_layer.down.weight`, and the
  attention processors' `attn1.processor.to_q_lora.down.weight` (also the AnimateDiff motion
  LoRAs diffusers publishes, `unet.down_blocks.0.motion_modules.0.…`).
- AnimateDiff's original motion LoRAs (`v2_lora_*.ckpt`): `down_blocks.0.motion_modules.0.
  temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight`,
  renamed to diffusers' `UNetMotionModel` names as diffusers' converter does.
- kohya / A1111: `lora_unet_<flat name>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_te_` / `lora_te1_` / `lora_te2_` for the text encoders; names stay flat until the model
  resolves them (`mv2_jax.lora.resolve`). The published few-step LoRAs are of this form on
  diffusers' module names, SDXL's too (`latent-consistency/lcm-lora-sdv1-5`, `lcm-lora-sdxl`,
  `wangfuyun/AnimateLCM`'s `AnimateLCM_sd15_t2v_lora.safetensors`: fp16, `.alpha` per module).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mv2_jax.lora.adapter import LoraAdapter, LoraWeights
from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.safetensors_io import CheckpointFileError

ACCEPTED = (
    "diffusers / peft (`unet.….lora_A.weight`), older diffusers (`….lora.down.weight`, "
    "`….processor.to_q_lora.down.weight`), AnimateDiff motion LoRAs (`v2_lora_*.ckpt`), "
    "kohya / A1111 (`lora_unet_….lora_down.weight`, `lora_te_…`)"
)


@dataclass(frozen=True)
class KeyForm:
    """Keys that fully match `pattern` hold the `part` ("down", "up", "alpha") of the module
    that `module` (an `re` template) names."""

    pattern: str
    part: str
    module: str = r"\g<m>"


_DOWN_UP = r"(?P<part>down|up)\.weight"
DIFFUSERS_FORMS = (
    KeyForm(r"(?P<m>.+)\.lora_A\.weight", "down"),
    KeyForm(r"(?P<m>.+)\.lora_B\.weight", "up"),
    KeyForm(rf"(?P<m>.+)\.lora(?:_linear_layer)?\.{_DOWN_UP}", "?"),
    KeyForm(rf"(?P<m>.+)\.to_(?P<p>q|k|v)_lora\.{_DOWN_UP}", "?", r"\g<m>.to_\g<p>"),
    KeyForm(rf"(?P<m>.+)\.to_out_lora\.{_DOWN_UP}", "?", r"\g<m>.to_out.0"),
    KeyForm(r"(?P<m>.+)\.(?:lora_)?alpha", "alpha"),
)
KOHYA_FORMS = (
    KeyForm(r"(?P<m>[^.]+)\.lora_(?P<part>down|up)\.weight", "?"),
    KeyForm(r"(?P<m>[^.]+)\.alpha", "alpha"),
)
# Component prefixes of each layout; a diffusers key without one is the UNet's.
DIFFUSERS_PREFIX = r"(?P<c>unet|text_encoder|text_encoder_2)\.(?P<k>.+)"
KOHYA_PREFIX = r"lora_(?P<c>unet|te|te1|te2)_(?P<k>.+)"
KOHYA_COMPONENTS = {
    "unet": "unet",
    "te": "text_encoder",
    "te1": "text_encoder",
    "te2": "text_encoder_2",
}
# Module renames after parsing: attention processors sit on their attention module, and
# AnimateDiff's motion modules have diffusers' UNetMotionModel names.
UNET_RENAMES = (
    (r"\.processor(?=\.|$)", ""),
    (r"\.temporal_transformer(?=\.)", ""),
    (r"\.attention_blocks\.0(?=\.)", ".attn1"),
    (r"\.attention_blocks\.1(?=\.)", ".attn2"),
)
TEXT_RENAMES = (
    (r"\.processor(?=\.|$)", ""),
    (r"\.to_(q|k|v)$", r".\1_proj"),
    (r"\.to_out\.0$", ".out_proj"),
)
_UNSUPPORTED = {
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "hada_": "LoHa",
    "lokr_": "LoKr",
}


def is_kohya(keys) -> bool:
    return any(re.match(KOHYA_PREFIX, k) for k in keys)


def parse_lora(
    state: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None, source="LoRA"
) -> LoraAdapter:
    """A LoRA state dict (any layout above) → `LoraAdapter`; keys of no layout, unpaired
    down/up weights, and adapters of other kinds (DoRA, LoHa, LoKr) stop with an error."""
    kohya = is_kohya(state)
    prefix, forms = (KOHYA_PREFIX, KOHYA_FORMS) if kohya else (DIFFUSERS_PREFIX, DIFFUSERS_FORMS)
    compiled = [(re.compile(f.pattern), f) for f in forms]
    parts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unexpected = []
    for key in state:
        match = re.fullmatch(prefix, key)
        component, rest = (match["c"], match["k"]) if match else ("unet", key)
        if kohya:
            component = KOHYA_COMPONENTS.get(component) if match else None
        parsed = _parse_key(rest, compiled) if component else None
        if parsed is None:
            unexpected.append(key)
            continue
        module, part = parsed
        if not kohya:
            module = _rename(module, UNET_RENAMES if component == "unet" else TEXT_RENAMES)
        slot = parts.setdefault((component, module), {})
        if part in slot:
            unexpected.append(f"{key} (a second {part} for {component}.{module})")
            continue
        slot[part] = key
    if not parts and unexpected:
        raise CheckpointFileError(f"{source}: not a LoRA file of a known layout ({_why(state)})")
    if unexpected:
        raise WeightMismatchError(
            source, [], unexpected, [], hint=f"  {_unsupported(unexpected)}accepted: {ACCEPTED}"
        )
    config = _adapter_config(metadata or {}, source)
    components, missing = {}, []
    for (component, module), slot in parts.items():
        if "down" not in slot or "up" not in slot:
            have = ", ".join(slot.values())
            missing.append(f"{component}.{module}: {'up' if 'down' in slot else 'down'} of {have}")
            continue
        down, up = np.asarray(state[slot["down"]]), np.asarray(state[slot["up"]])
        alpha = _scalar(state[slot["alpha"]]) if "alpha" in slot else None
        if alpha is None:
            alpha = _configured_alpha(config.get(component, {}), module, down.shape[0])
        components.setdefault(component, {})[module] = LoraWeights(down, up, alpha)
    if missing:
        raise WeightMismatchError(source, missing, [], [], hint="  each LoRA needs down and up")
    layout = "kohya" if kohya else "diffusers"
    return LoraAdapter(
        components,
        format=layout,
        naming="kohya" if kohya else "torch",
        source=source,
        metadata=dict(metadata or {}),
    )


def _parse_key(rest: str, compiled) -> tuple[str, str] | None:
    for regex, form in compiled:
        if match := regex.fullmatch(rest):
            part = match["part"] if form.part == "?" else form.part
            return match.expand(form.module), part
    return None


def _rename(module: str, renames) -> str:
    for pattern, replacement in renames:
        module = re.sub(pattern, replacement, module)
    return module


def _scalar(value) -> float:
    value = np.asarray(value, np.float64)
    if value.size != 1:
        raise ValueError(f"a LoRA alpha must be one number, got shape {value.shape}")
    return float(value.reshape(()))


def _adapter_config(metadata: Mapping[str, str], source: str) -> dict[str, dict]:
    """diffusers' `lora_adapter_metadata` (peft `LoraConfig` fields, each prefixed by its
    component: `unet.lora_alpha`) → `{component: {field: value}}`."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        fields = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointFileError(f"{source}: unreadable lora_adapter_metadata ({e})") from e
    config: dict[str, dict] = {}
    for key, value in fields.items():
        component, _, name = key.partition(".")
        config.setdefault(component, {})[name] = value
    for component, fields in config.items():
        if fields.get("use_dora"):
            raise NotImplementedError(f"{source}: a DoRA adapter ({component}); only LoRA here")
    return config


def _configured_alpha(config: Mapping, module: str, rank: int) -> float | None:
    """peft's alpha for `module`: the first `alpha_pattern` entry matching the end of its name,
    else `lora_alpha`; rank-stabilised LoRA scales by alpha / √rank, so its alpha is stored as
    alpha·√rank (the multiplier alpha / rank stays right)."""
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    if alpha is None:
        return None
    return float(alpha) * math.sqrt(rank) if config.get("use_rslora") else float(alpha)


def _unsupported(keys) -> str:
    kinds = sorted({kind for k in keys for mark, kind in _UNSUPPORTED.items() if mark in k})
    return f"{' and '.join(kinds)} adapters are not supported; " if kinds else ""


def _why(state) -> str:
    shown = ", ".join(list(state)[:3]) or "no tensors"
    return f"keys like {shown}; {_unsupported(state)}accepted: {ACCEPTED}"
