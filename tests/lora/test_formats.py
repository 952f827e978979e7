"""Reading LoRA files: the layouts' key forms and components, alphas from tensors and from
diffusers' metadata, and clear errors for truncated files, unknown layouts, unpaired weights and
adapters of other kinds (DoRA)."""

import json
import math

import numpy as np
import pytest
from safetensors.numpy import save_file

from mv2_jax.lora import parse_lora, read_lora
from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.safetensors_io import CheckpointFileError

DOWN, UP = np.ones((2, 8), np.float32), np.ones((4, 2), np.float32)
FC1 = "text_model.encoder.layers.1.mlp.fc1"


def test_layouts_name_the_same_modules():
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    adapter = parse_lora(
        {
            f"unet.{attn}.to_q.lora_A.weight": DOWN,
            f"unet.{attn}.to_q.lora_B.weight": UP,
            f"unet.{attn}.processor.to_out_lora.down.weight": DOWN,
            f"unet.{attn}.processor.to_out_lora.up.weight": UP,
            f"unet.{attn}.to_k.lora.down.weight": DOWN,
            f"unet.{attn}.to_k.lora.up.weight": UP,
            "text_encoder.text_model.encoder.layers.0.self_attn.to_v_lora.down.weight": DOWN,
            "text_encoder.text_model.encoder.layers.0.self_attn.to_v_lora.up.weight": UP,
            f"text_encoder_2.{FC1}.lora_linear_layer.down.weight": DOWN,
            f"text_encoder_2.{FC1}.lora_linear_layer.up.weight": UP,
        }
    )
    assert sorted(adapter.modules("unet")) == [f"{attn}.to_k", f"{attn}.to_out.0", f"{attn}.to_q"]
    assert list(adapter.modules("text_encoder")) == ["text_model.encoder.layers.0.self_attn.v_proj"]
    assert list(adapter.modules("text_encoder_2")) == [FC1]
    assert all(w.alpha is None and w.multiplier == 1 for w in adapter.modules("unet").values())


def test_animatediff_original_names_become_diffusers_motion_names():
    old = (
        "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1"
    )
    adapter = parse_lora(
        {f"{old}.processor.to_q_lora.down.weight": DOWN, f"{old}.processor.to_q_lora.up.weight": UP}
    )
    assert list(adapter.modules("unet")) == [
        "up_blocks.1.motion_modules.2.transformer_blocks.0.attn2.to_q"
    ]


def test_kohya_components_and_alpha():
    adapter = parse_lora(
        {
            "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": DOWN,
            "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": UP,
            "lora_unet_mid_block_attentions_0_proj_in.alpha": np.array(1.0, np.float32),
            "lora_te1_text_model_encoder_layers_0_mlp_fc2.lora_down.weight": DOWN,
            "lora_te1_text_model_encoder_layers_0_mlp_fc2.lora_up.weight": UP,
            "lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_down.weight": DOWN,
            "lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_up.weight": UP,
        }
    )
    assert adapter.naming == "kohya"
    assert adapter.modules("unet")["mid_block_attentions_0_proj_in"].multiplier == 0.5
    assert list(adapter.modules("text_encoder")) == ["text_model_encoder_layers_0_mlp_fc2"]
    assert list(adapter.modules("text_encoder_2")) == ["text_model_encoder_layers_0_mlp_fc2"]


def test_metadata_alphas_patterns_and_rslora():
    state = {
        "unet.a.to_q.lora_A.weight": DOWN,
        "unet.a.to_q.lora_B.weight": UP,
        "unet.b.to_q.lora_A.weight": DOWN,
        "unet.b.to_q.lora_B.weight": UP,
        "text_encoder.q_proj.lora_A.weight": DOWN,
        "text_encoder.q_proj.lora_B.weight": UP,
    }
    config = {
        "unet.lora_alpha": 8,
        "unet.alpha_pattern": {"b.to_q": 3},
        "text_encoder.lora_alpha": 4,
        "text_encoder.use_rslora": True,
    }
    adapter = parse_lora(state, {"lora_adapter_metadata": json.dumps(config)})
    unet = adapter.modules("unet")
    assert unet["a.to_q"].multiplier == 4 and unet["b.to_q"].multiplier == 1.5
    assert adapter.modules("text_encoder")["q_proj"].multiplier == pytest.approx(4 / math.sqrt(2))


def test_truncated_file_says_so(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"unet.a.lora_A.weight": DOWN, "unet.a.lora_B.weight": UP}, str(path))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointFileError, match="truncated"):
        read_lora(path)


def test_unknown_layout_lists_the_accepted_ones(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": DOWN, "conv_in.bias": UP}, str(path))
    with pytest.raises(CheckpointFileError, match=r"not a LoRA file.*kohya"):
        read_lora(tmp_path)
    with pytest.raises(CheckpointFileError, match="unknown LoRA file type"):
        read_lora(path.rename(tmp_path / "lora.txt"))


def test_unpaired_and_foreign_keys_are_listed():
    with pytest.raises(WeightMismatchError, match=r"(?s)unet\.a\.to_q: up of.*lora_A"):
        parse_lora(
            {
                "unet.a.to_q.lora_A.weight": DOWN,
                "unet.b.lora_A.weight": DOWN,
                "unet.b.lora_B.weight": UP,
            }
        )
    with pytest.raises(WeightMismatchError, match=r"(?s)DoRA.*not supported") as info:
        parse_lora(
            {
                "unet.a.lora_A.weight": DOWN,
                "unet.a.lora_B.weight": UP,
                "unet.a.lora_magnitude_vector": UP[:, 0],
                "unet.a.something_else": UP,
            }
        )
    assert info.value.unexpected == ["unet.a.lora_magnitude_vector", "unet.a.something_else"]
