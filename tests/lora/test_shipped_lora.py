"""The shipped slow-motion LoRA (docs/shapes.md) binds to the shipped I2V model: every key maps
to a motion-module param, fusing changes only those, unloading restores the base exactly."""

from __future__ import annotations

import jax
import numpy as np

import mv2_jax
from mv2_jax.lora import read_lora
from mv2_jax.pipelines.shipped import SHIPPED_LORAS, shipped_model


def _leaves(params) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def test_the_slow_motion_lora_changes_only_motion_modules():
    folder = shipped_model("i2v")
    assert folder is not None, "the checkout's mv2_jax/assets/shapes/i2v is missing"
    adapter = read_lora(SHIPPED_LORAS["slow_motion"])
    assert set(adapter.components) == {"unet"}
    modules = adapter.components["unet"]
    assert modules and all("motion_modules" in name for name in modules)
    assert {w.rank for w in modules.values()} == {8}
    pipe = mv2_jax.load_pipeline(folder)
    base = _leaves(pipe.unet_params)
    pipe.load_lora_weights(SHIPPED_LORAS["slow_motion"], adapter_name="slow")
    fused = _leaves(pipe.unet_params)
    changed = [k for k in base if not np.array_equal(base[k], fused[k])]
    assert len(changed) == len(modules)  # one kernel per LoRA module
    assert all("motion_modules" in k for k in changed)
    pipe.unload_lora_weights()
    restored = _leaves(pipe.unet_params)
    assert all(np.array_equal(base[k], restored[k]) for k in base)
