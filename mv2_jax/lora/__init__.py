"""LoRA adapters: read the published layouts, resolve them against a model, fuse them into its
params (per param, on the params' own devices, scales traced).

Reading (`read.py`, `formats.py`; the canonical form in `adapter.py`)::

    adapter = read_lora(path)            # LoraAdapter: {component: {torch module: LoraWeights}}
    adapter = parse_lora(state, metadata, source)   # a state dict already in memory

  Layouts: diffusers / peft `pytorch_lora_weights.safetensors` (alphas from its
  `lora_adapter_metadata`, `.alpha` tensors, or alpha = rank), older diffusers `.lora.down` /
  attention-processor `to_q_lora` keys, AnimateDiff motion LoRAs (original `v2_lora_*.ckpt`
  and diffusers' layout), kohya / A1111 `lora_unet_` / `lora_te_` / `lora_te1_` / `lora_te2_`
  (LoCon convolutions included; SDXL's LDM block names too). `.ckpt` / `.pt` need the
  `[convert]` extra (torch, weights-only loads).

Binding (`resolve.py`, `components.py`) — each module `X` updates the param `X.weight` converts
to, through the family's rules (`mv2_jax.weights.mapping.KeyMap`); anything that maps to no
param, or to one of another shape, raises `WeightMismatchError` listing every such key::

    bound = bind_lora(adapter, "unet", module, params)            # BoundLora
    bound = resolve_lora(adapter, "unet", param_shapes, rules)     # without a module
    per_component = bind_components(adapter, {"unet": (module, params), ...})

Fusing (`merge.py`)::

    fused = merge_lora(params, [(bound_a, 0.8), (bound_b, 0.5)])   # new tree; input untouched
    deltas = lora_deltas(params, [(bound_a, 0.8)])   # {flax path: fp32 delta, W's sharding}
    fused = merge_components({"unet": (m, p), "text_encoder": (m2, p2)}, [(adapter, 0.8)])

  `ΔW = scale · alpha / rank · T(up @ down)` in fp32, T the base weight's transform, added to W
  and cast once to W's dtype, by a jitted per-param update whose output keeps W's sharding
  (a sharded UNet is never gathered); scales are traced, so new scales never recompile.

Converting (`folder.py`, for `convert/to_flax.py --lora PATH[:SCALE] --lora-scale S`)::

    adapters = read_loras([(path, 0.8), ...])       # read, scales checked finite
    check_folder_loras(src_pipeline_folder, adapters)   # bound to its configs' shapes, no weights
    fuse_into_folder(converted_folder, adapters, dtype)  # touched components rewritten, fused

For the pipelines (`load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`,
`unload_lora_weights`): keep the base params; `set_adapters(names, weights)` / `fuse_lora` is
`merge_components(base, [(adapter, weight), …])` on the base, and `unfuse_lora` /
`unload_lora_weights` go back to the kept base tree, which is bit-exact because `merge_lora`
never writes to its input and returns the untouched params as the same arrays. Binding once per
adapter (`bind_components`) and re-merging with new scales reuses every compiled update.
"""

from mv2_jax.lora.adapter import COMPONENTS, LoraAdapter, LoraWeights
from mv2_jax.lora.components import bind_components, bind_lora, merge_components
from mv2_jax.lora.formats import parse_lora
from mv2_jax.lora.merge import lora_deltas, merge_lora
from mv2_jax.lora.read import read_lora
from mv2_jax.lora.resolve import BoundLora, LoraUpdate, resolve_lora

__all__ = [
    "COMPONENTS",
    "BoundLora",
    "LoraAdapter",
    "LoraUpdate",
    "LoraWeights",
    "bind_components",
    "bind_lora",
    "lora_deltas",
    "merge_components",
    "merge_lora",
    "parse_lora",
    "read_lora",
    "resolve_lora",
]
