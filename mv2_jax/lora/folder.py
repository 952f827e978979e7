"""LoRAs fused into a pipeline folder in orbax form, for `convert/to_flax.py --lora PATH[:SCALE]`:
the touched components (unet, text_encoder, text_encoder_2) are read back, the adapters merged
at their scales (`merge_lora`: the same arithmetic as `pipe.load_lora_weights` on those
params, in their stored dtype) and written again; the other components stay as written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from mv2_jax.lora.adapter import LoraAdapter, checked_scale
from mv2_jax.lora.components import bind_components
from mv2_jax.lora.merge import merge_lora
from mv2_jax.lora.read import read_lora

Adapters = Sequence[tuple[LoraAdapter, float]]


def read_loras(loras: Sequence[tuple[str | os.PathLike, float]]) -> list[tuple[LoraAdapter, float]]:
    """Each (path, scale) read (`read_lora`, every layout it knows); an unreadable file or a
    scale that is not finite stops before any is applied."""
    scales = [checked_scale(scale, str(path)) for path, scale in loras]
    return [(read_lora(path), scale) for (path, _), scale in zip(loras, scales, strict=True)]


def check_folder_loras(folder: str | os.PathLike, adapters: Adapters) -> None:
    """Bind every adapter against the param shapes that the component configs of the diffusers
    pipeline folder `folder` give (no weights read): a LoRA that does not fit raises
    `WeightMismatchError` listing its keys, before any conversion."""
    from mv2_jax.weights.load import build_module, read_config
    from mv2_jax.weights.registry import param_shapes

    models = {}
    for name in _touched(adapters):
        if (Path(folder) / name / "config.json").is_file():
            module, family = build_module(read_config(Path(folder) / name))
            models[name] = (module, param_shapes(module, family))
    for adapter, _ in adapters:
        bind_components(adapter, models)


def fuse_into_folder(
    folder: str | os.PathLike, adapters: Adapters, dtype, log: Callable[[str], None] = print
) -> None:
    """Merge `adapters` into the components of the converted pipeline folder `folder` (orbax
    params in `dtype`), rewriting the params of the components they touch."""
    from mv2_jax.weights.load import ORBAX_PARAMS_DIR, load_component
    from mv2_jax.weights.orbax_io import save_params

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(
            "LoRAs are fused into a pipeline's unet / text encoders, and this conversion wrote "
            "one component; convert a pipeline (a pipeline folder or a whole single file)"
        )
    models = {
        name: load_component(folder / name, dtype)
        for name in _touched(adapters)
        if (folder / name / "config.json").is_file()
    }
    bound = [(bind_components(adapter, models), scale) for adapter, scale in adapters]
    for name, (_, params) in models.items():  # every adapter bound first: a misfit writes nothing
        updates = [(lora[name], scale) for lora, scale in bound if name in lora]
        fused = merge_lora(params, updates)
        shutil.rmtree(folder / name / ORBAX_PARAMS_DIR)
        save_params(folder / name / ORBAX_PARAMS_DIR, fused)
        count = sum(len(update.updates) for update, _ in updates)
        log(f"{name}: {len(updates)} LoRA(s) fused ({count} updates of its params)")


def _touched(adapters: Adapters) -> list[str]:
    """The components any of `adapters` holds weights for."""
    return sorted({c for adapter, _ in adapters for c in adapter.components if adapter.modules(c)})
