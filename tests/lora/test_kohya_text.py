"""kohya text-encoder LoRA names bind with or without CLIP's `text_model_` wrapper (kohya files
made on transformers < 5 have it; trainers on transformers ≥ 5, whose CLIPTextModel dropped
it, may not), to the same params."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import mv2_jax
from mv2_jax.lora import bind_lora, parse_lora
from tests.weights.tiny_models import CLIP, tiny_clip

pytestmark = pytest.mark.torch


def test_text_model_prefix_is_optional(tmp_path):
    tiny_clip().save_pretrained(tmp_path / "te")
    module, params = mv2_jax.load_component(tmp_path / "te")
    rng = np.random.default_rng(0)
    down = rng.standard_normal((2, CLIP["intermediate_size"]), np.float32)
    up = rng.standard_normal((CLIP["hidden_size"], 2), np.float32)

    def bound(prefix: str):
        name = f"lora_te_{prefix}encoder_layers_1_mlp_fc2"
        state = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
        return bind_lora(parse_lora(state), "text_encoder", module, params).updates

    with_prefix, without = bound("text_model_"), bound("")
    assert list(with_prefix) == list(without) and len(without) == 1
    (path,) = without
    assert "layers_1" in "/".join(path) and path[-1] == "kernel"
