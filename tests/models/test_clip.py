"""Parity of the Flax CLIP text encoders with transformers' PyTorch models (random weights),
loaded through `load_component` from `save_pretrained` folders."""

import json
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import save_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from mv2_jax.weights.safetensors_io import read_safetensors  # noqa: E402
from tests.reference import randomize_, relative_error  # noqa: E402

FP32_TOL = 1e-4


@dataclass(frozen=True)
class Case:
    """A tiny config plus how its prompts look. `legacy` configs carry eos_token_id=2, so the
    real EOS is the largest id; new-style ones use an EOS id below the body tokens, so that
    pooling at argmax(input_ids) would pick the wrong token."""

    cls: str
    config: dict = field(default_factory=dict)
    legacy: bool = True
    length: int = 77
    pad: str = "eos"  # "eos" (SD1.x tokenizer), "zero" (OpenCLIP bigG) or "one"
    mask: str = "none"  # "none", "right" (tokenizer padding) or "left"
    torch_attention: str = "sdpa"


CASES = {
    "L-quick_gelu-legacy-77": Case("CLIPTextModel", dict(hidden_size=32, num_attention_heads=4)),
    "gelu-new_eos-mask-16": Case(
        "CLIPTextModel",
        dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, hidden_act="gelu"),
        legacy=False,
        length=16,
        pad="one",
        mask="right",
    ),
    "proj-bigG_like-mask-77": Case(
        "CLIPTextModelWithProjection",
        dict(hidden_size=64, num_attention_heads=8, hidden_act="gelu", layer_norm_eps=1e-6),
        pad="zero",
        mask="right",
    ),
    "proj-new_eos-9": Case(
        "CLIPTextModelWithProjection",
        dict(
            hidden_size=40, num_attention_heads=5, num_hidden_layers=1, max_position_embeddings=20
        ),
        legacy=False,
        length=9,
    ),
    # Fully masked query rows (left padding) are defined by eager attention's additive mask:
    # uniform weights over every key. transformers' sdpa path returns other values there.
    "left_pad-eager": Case(
        "CLIPTextModel",
        dict(hidden_size=32, num_attention_heads=2),
        legacy=False,
        length=12,
        mask="left",
        torch_attention="eager",
    ),
}


def _config(case: Case) -> "transformers.CLIPTextConfig":
    vocab = 99
    tokens = dict(bos_token_id=vocab - 2, eos_token_id=2) if case.legacy else dict(eos_token_id=7)
    base = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=2 * case.config.get("hidden_size", 32),
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=24,
        max_position_embeddings=77,
        pad_token_id=1,
        bos_token_id=3,
    )
    return transformers.CLIPTextConfig(**{**base, **tokens, **case.config})


def _prompts(case: Case, config, batch: int = 3, seed: int = 0):
    """Token ids `[B, L]` with BOS, random body, EOS at a random place and padding after it; the
    padding mask `[B, L]` (1 = keep) or None."""
    rng = np.random.default_rng(seed)
    vocab, length = config.vocab_size, case.length
    eos = vocab - 1 if case.legacy else config.eos_token_id
    low, high = (4, vocab - 2) if case.legacy else (eos + 1, vocab)
    pad = {"eos": eos, "zero": 0, "one": 1}[case.pad]
    ids = rng.integers(low, high, (batch, length))
    mask = np.ones((batch, length), np.int64)
    ends = [length - 1, *rng.integers(2, length - 1, batch - 1)]  # EOS last in row 0 only
    for row, end in enumerate(ends):
        ids[row, 0], ids[row, end], ids[row, end + 1 :] = config.bos_token_id, eos, pad
        mask[row, end + 1 :] = 0
    if case.mask == "left":
        mask = mask[:, ::-1].copy()
        mask[0, :3] = 0  # the full-length row gets left padding too
    return ids, (None if case.mask == "none" else mask)


def _save(case: Case, tmp_path, seed: int = 0):
    config = _config(case)
    model = getattr(transformers, case.cls)._from_config(
        config, attn_implementation=case.torch_attention
    )
    randomize_(model, seed=seed)
    model.save_pretrained(tmp_path)
    return model, config


def _torch_outputs(model, ids, mask) -> dict:
    with torch.no_grad():
        out = model(
            torch.from_numpy(ids),
            attention_mask=None if mask is None else torch.from_numpy(mask),
            output_hidden_states=True,
        )
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return dict(
        last_hidden_state=out.last_hidden_state.numpy(),
        pooled=pooled.numpy(),
        hidden_states=[h.numpy() for h in out.hidden_states],
    )


def _flax_outputs(module, params, ids, mask) -> dict:
    out = module.apply(
        {"params": params},
        jnp.asarray(ids),
        attention_mask=None if mask is None else jnp.asarray(mask),
        output_hidden_states=True,
    )
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    as_np = lambda x: np.asarray(x.astype(jnp.float32))  # noqa: E731
    return dict(
        last_hidden_state=as_np(out.last_hidden_state),
        pooled=as_np(pooled),
        hidden_states=[as_np(h) for h in out.hidden_states],
    )


def _errors(actual: dict, expected: dict) -> dict:
    assert len(actual["hidden_states"]) == len(expected["hidden_states"])
    errors = {k: relative_error(actual[k], expected[k]) for k in ("last_hidden_state", "pooled")}
    for i, (a, e) in enumerate(zip(actual["hidden_states"], expected["hidden_states"])):
        errors[f"hidden_states[{i}]"] = relative_error(a, e)
    return errors


@pytest.mark.torch
@pytest.mark.parametrize("name", list(CASES))
def test_parity_fp32(name, tmp_path):
    case = CASES[name]
    model, config = _save(case, tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    assert type(module).__name__ == case.cls
    ids, mask = _prompts(case, config)
    expected = _torch_outputs(model, ids, mask)
    assert len(expected["hidden_states"]) == config.num_hidden_layers + 1
    errors = _errors(_flax_outputs(module, params, ids, mask), expected)
    assert max(errors.values()) <= FP32_TOL, errors


@pytest.mark.torch
def test_pooling_follows_eos_rule(tmp_path):
    """The pooled vector is the final state at the EOS position transformers picks, which is
    not the last position for padded rows."""
    case = CASES["gelu-new_eos-mask-16"]
    _, config = _save(case, tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    ids, mask = _prompts(case, config)
    out = module.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    eos_at = (ids == config.eos_token_id).argmax(-1)
    assert (eos_at[1:] < case.length - 1).all()
    np.testing.assert_array_equal(
        out.pooler_output, out.last_hidden_state[np.arange(len(ids)), eos_at]
    )
    assert out.hidden_states is None


@pytest.mark.torch
def test_legacy_key_layout(tmp_path):
    """Checkpoints written by transformers 4.x (`text_model.` prefix and the `position_ids`
    buffer) load to the same params as transformers 5's layout."""
    case = CASES["L-quick_gelu-legacy-77"]
    model, config = _save(case, tmp_path)
    _, params = mv2_jax.load_component(tmp_path)
    path = tmp_path / "model.safetensors"
    state = {f"text_model.{k}": np.ascontiguousarray(v) for k, v in read_safetensors(path).items()}
    state["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    save_file(state, path)
    module, legacy_params = mv2_jax.load_component(tmp_path)
    flat = lambda p: {k: np.asarray(v) for k, v in _flatten(p).items()}  # noqa: E731
    np.testing.assert_equal(flat(legacy_params), flat(params))
    ids, mask = _prompts(case, config)
    errors = _errors(
        _flax_outputs(module, legacy_params, ids, mask), _torch_outputs(model, ids, mask)
    )
    assert max(errors.values()) <= FP32_TOL, errors


def _flatten(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


@pytest.mark.torch
def test_bf16_close_to_fp32(tmp_path):
    case = CASES["proj-bigG_like-mask-77"]
    model, config = _save(case, tmp_path)
    module, params = mv2_jax.load_component(tmp_path, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in _flatten(params).values())
    ids, mask = _prompts(case, config)
    actual = _flax_outputs(module, params, ids, mask)
    assert all(np.isfinite(v).all() for v in (actual["last_hidden_state"], actual["pooled"]))
    errors = _errors(actual, _torch_outputs(model, ids, mask))
    # Measured 1.2e-2 (last_hidden_state; text_embeds 1.1e-2): bf16 params and activations keep
    # 8 mantissa bits (≈4e-3 per rounding), compounded over the layers. fp32 gives ≈6e-7.
    assert max(errors.values()) <= 1.5e-2, errors


@pytest.mark.torch
def test_missing_tensor_is_named(tmp_path):
    _save(CASES["proj-new_eos-9"], tmp_path)
    path = tmp_path / "model.safetensors"
    state = {k: np.ascontiguousarray(v) for k, v in read_safetensors(path).items()}
    del state["text_model.encoder.layers.0.mlp.fc2.weight"]
    save_file(state, path)
    with pytest.raises(WeightMismatchError, match="text_model/encoder/layers_0/mlp/fc2/kernel"):
        mv2_jax.load_component(tmp_path)


@pytest.mark.torch
def test_layer_count_mismatch_is_named(tmp_path):
    _save(CASES["L-quick_gelu-legacy-77"], tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightMismatchError) as info:
        mv2_jax.load_component(tmp_path)
    assert "encoder.layers.1.self_attn.q_proj.weight" in str(info.value)
    assert info.value.unexpected and not info.value.missing
