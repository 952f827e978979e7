"""The accelerator kernels behind `dot_product_attention` against its XLA form, on CPU.

Splash attention (Pallas, TPU) runs in interpret mode (`interpret_mode()`; both jax 0.10.2 and
0.12.1 interpret it) at the sequence lengths the UNets meet: 75² = 5,625 tokens (600² images),
reference attention's doubled keys with their key bias, 77 text tokens, IP-Adapter's 4 or 16
image tokens (and 77 + 4 / 77 + 16 when concatenated), CLIP's causal self-attention with a
padding mask. cuDNN cannot run here: its constraint checker is tested as a pure function, and its
wrapper's arithmetic (key features, even lengths, head padding) through jax's XLA form instead.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.models import attention_kernels
from mv2_jax.models.attention import Attention, dot_product_attention
from mv2_jax.models.attention_kernels import (
    KERNELS,
    Kernel,
    cudnn_unsupported,
    interpret_mode,
    splash_blocks,
    splash_unsupported,
    warn_fallback,
)
from tests.reference import relative_error

# fp32: measured ≤ 8e-7 (summation order only). bf16 inputs: splash and the XLA form both round
# the probabilities to bf16 before the weighted sum; against fp32 on the same (bf16-exact)
# inputs splash measured ≤ 3.4e-3, never more than 0.97× the XLA form's own bf16 error.
FP32_TOLERANCE = 1e-5
BF16_TOLERANCE = 5e-3
BF16_VS_XLA = 1.25


@pytest.fixture(autouse=True)
def _fresh_warnings():
    warn_fallback.cache_clear()  # each test sees its own "once"
    yield
    warn_fallback.cache_clear()


def _case(batch, heads, lq, lk, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(batch, lq, heads, dim), (batch, lk, heads, dim), (batch, lk, heads, dim)]
    # bf16-exact values, so fp32 and bf16 runs see the same inputs
    return [rng.standard_normal(s).astype(jnp.bfloat16).astype(np.float32) for s in shapes]


def _reference_bias(tokens, log_scale):
    """Reference attention (appearance.py / transformer.py): own tokens, then the reference's."""
    return np.concatenate([np.zeros(tokens), np.full(tokens, log_scale)]).astype(np.float32)


def _compare_splash(qkv, dtype, **kw):
    expected = dot_product_attention(*qkv, implementation="xla", **kw)  # fp32
    args = [jnp.asarray(x, dtype) for x in qkv]
    with interpret_mode():
        out = dot_product_attention(*args, implementation="splash", **kw)
    assert out.dtype == dtype and out.shape == expected.shape
    error = relative_error(np.asarray(out, np.float32), expected)
    if dtype == jnp.float32:
        assert error <= FP32_TOLERANCE
    else:
        xla_bf16 = dot_product_attention(*args, implementation="xla", **kw)
        assert error <= BF16_TOLERANCE
        assert error <= BF16_VS_XLA * relative_error(np.asarray(xla_bf16, np.float32), expected)


DTYPES = [jnp.float32, jnp.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lq,lk",
    [(77, 4), (77, 16), (300, 77), (300, 81), (300, 93)],
    ids=["ip-4", "ip-16", "text-77", "text+ip-81", "text+ip-93"],
)
def test_splash_cross_attention_lengths(dtype, lq, lk):
    _compare_splash(_case(2, 2, lq, lk), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lk", [81, 93])
def test_splash_key_bias_and_key_mask(dtype, lk):
    """Image tokens weighted by a key bias (one dropped), a per-example padding mask."""
    key_bias = np.zeros(lk, np.float32)
    key_bias[77:] = np.log(0.4)
    key_bias[-1] = -1e30
    mask = np.ones((2, 1, 1, lk), bool)
    mask[1, ..., 60:77] = False
    _compare_splash(_case(2, 2, 300, lk), dtype, key_bias=key_bias, mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_splash_clip_causal_padding(dtype):
    """CLIP's text encoder: 77 tokens, causal, keys after each prompt's end masked."""
    mask = np.ones((2, 1, 1, 77), bool)
    mask[0, ..., 12:] = False
    _compare_splash(_case(2, 2, 77, 77), dtype, mask=mask, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_splash_head_mask_and_odd_head_dim(dtype):
    """A mask per head, and SD1.5's head dim 40 (padded to 128 lanes)."""
    mask = np.ones((2, 2, 1, 130), bool)
    mask[:, 1, :, ::3] = False
    _compare_splash(_case(2, 2, 130, 130, dim=40), dtype, mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_splash_600px_self_and_text_attention(dtype):
    """75² = 5,625 latent tokens: self-attention, then cross-attention to 77 text tokens."""
    q, k, v = _case(1, 1, 5625, 5625)
    _compare_splash((q, k, v), dtype)
    _compare_splash((q, k[:, :77], v[:, :77]), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_splash_600px_reference_attention(dtype):
    """Reference attention at 600²: 5,625 queries, 11,250 keys, the reference's weighted."""
    q, k, v = _case(1, 1, 5625, 11250, seed=1)
    _compare_splash((q, k, v), dtype, key_bias=_reference_bias(5625, np.log(0.6)))


def test_splash_gradients_match_xla():
    q, k, v = _case(1, 1, 100, 162)
    bias = _reference_bias(81, np.log(0.5))

    def loss(implementation, q, k, v, bias):
        out = dot_product_attention(q, k, v, key_bias=bias, implementation=implementation)
        return jnp.sum(out * jnp.cos(out))

    expected = jax.grad(loss, argnums=(1, 2, 3, 4))("xla", q, k, v, bias)
    with interpret_mode():
        grads = jax.grad(loss, argnums=(1, 2, 3, 4))("splash", q, k, v, bias)
    for got, want in zip(grads, expected, strict=True):
        assert relative_error(got, want) <= FP32_TOLERANCE


@pytest.mark.parametrize(
    "length,padded,block",
    [(4, 128, 128), (77, 128, 128), (93, 128, 128), (4096, 4096, 512), (5184, 5376, 256),
     (5625, 5632, 512), (11250, 11264, 512), (640, 640, 128)],
)  # fmt: skip
def test_splash_blocks_cover_the_lengths(length, padded, block):
    blocks = splash_blocks(length, length)
    assert (blocks.padded_lq, blocks.block_q) == (padded, block)
    assert (blocks.padded_lk, blocks.block_kv) == (padded, block)
    assert padded % block == 0 and block % 128 == 0
    assert padded - length <= max(length / 16, 127)


# --- cuDNN: the constraint checker, and the wrapper's arithmetic through XLA --------------------


@pytest.fixture
def on_gpu(monkeypatch):
    """Pretend the default backend is a CUDA GPU of the compute capability set on the result."""
    capability = {"value": (9, 0)}
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attention_kernels, "_compute_capability", lambda: capability["value"])
    return capability


def _abstract(batch, lq, lk, heads=2, dim=64, dtype=jnp.bfloat16):
    q = jax.ShapeDtypeStruct((batch, lq, heads, dim), dtype)
    kv = jax.ShapeDtypeStruct((batch, lk, heads, dim), dtype)
    return q, kv, kv


def test_cudnn_checker_accepts_what_the_models_use(on_gpu):
    for lq, lk in [(5625, 5625), (5625, 77), (4096, 8192), (77, 4), (77, 16)]:
        assert cudnn_unsupported(*_abstract(2, lq, lk), None, None, False) is None
    mask = np.ones((2, 1, 1, 77), bool)
    assert cudnn_unsupported(*_abstract(2, 77, 77), mask, None, True) is None
    assert cudnn_unsupported(*_abstract(2, 5625, 11250), None, np.zeros(11250), False) is None


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(dtype=jnp.float32), "float16/bfloat16 query/key/value of one dtype, got float32"),
        (dict(dim=256, bias=True), "head dim 256 (264"),
        (dict(dim=160, capability=(8, 0)), "exceeds cuDNN's 128"),
        (dict(capability=(7, 5)), "compute capability"),
        (dict(mask=(2, 1, 300, 77)), "varies over queries"),
        (dict(mask=(3, 1, 1, 77)), "varies over queries"),
        (dict(causal=True), "top-left"),
        (dict(backend="cpu"), "backend is cpu"),
    ],
)
def test_cudnn_checker_names_the_problem(on_gpu, monkeypatch, change, words):
    on_gpu["value"] = change.get("capability", (9, 0))
    if "backend" in change:
        monkeypatch.setattr(jax, "default_backend", lambda: change["backend"])
    qkv = _abstract(2, 300, 77, dim=change.get("dim", 64), dtype=change.get("dtype", jnp.bfloat16))
    mask = np.ones(change["mask"], bool) if "mask" in change else None
    bias = np.zeros(77, np.float32) if change.get("bias") else None
    reason = cudnn_unsupported(*qkv, mask, bias, change.get("causal", False))
    assert reason is not None and words in reason


def test_cudnn_head_limit_counts_the_key_bias_features(on_gpu):
    assert cudnn_unsupported(*_abstract(1, 64, 64, dim=128), None, None, False) is None
    on_gpu["value"] = (8, 0)  # Ampere: 128 at most, and 128 + 3 features → 136
    assert cudnn_unsupported(*_abstract(1, 64, 64, dim=128), None, None, False) is None
    assert "136" in cudnn_unsupported(*_abstract(1, 64, 64, dim=128), None, np.zeros(64), False)


def _clip_call(dim):
    """CLIP-like: 77 tokens, causal, a padding mask, a key bias with a dropped key."""
    mask = np.ones((2, 1, 1, 77), bool)
    mask[1, ..., 30:] = False
    bias = np.where(np.arange(77) >= 70, np.log(0.3), 0).astype(np.float32)
    bias[5] = -1e30
    return _case(2, 2, 77, 77, dim=dim), dict(mask=mask, key_bias=bias, is_causal=True)


def _odd_keys_call(dim):
    """Cross-attention to 77 + 16 tokens, nothing folded: only the padded key to cut off."""
    return _case(2, 2, 50, 93, dim=dim), {}


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("call,dim", [(_clip_call, 64), (_odd_keys_call, 40)])
def test_cudnn_wrapper_arithmetic(on_gpu, monkeypatch, dtype, call, dim):
    """The cuDNN call as the wrapper makes it (key bias and mask folded into the features,
    lengths padded to even, head dims to multiples of 8), run by jax's XLA implementation in
    cuDNN's place, gives the XLA form's numbers."""
    calls = []
    original = jax.nn.dot_product_attention

    def xla_instead(query, key, value, implementation=None, key_value_seq_lengths=None, **kw):
        calls.append((implementation, query.shape, key.shape, key_value_seq_lengths))
        return original(
            query, key, value, key_value_seq_lengths=key_value_seq_lengths, **kw,
            implementation="xla",
        )  # fmt: skip

    monkeypatch.setattr(jax.nn, "dot_product_attention", xla_instead)
    qkv, kw = call(dim)
    expected = dot_product_attention(*qkv, implementation="xla", **kw)
    out = dot_product_attention(*(jnp.asarray(x, dtype) for x in qkv), implementation="cudnn", **kw)
    assert out.dtype == dtype and relative_error(np.asarray(out, np.float32), expected) <= 5e-3
    [(implementation, q_shape, k_shape, key_lengths)] = calls
    width = -(-(dim + (3 if kw else 0)) // 8) * 8
    lq, lk = qkv[0].shape[1], qkv[1].shape[1]
    assert implementation == "cudnn"
    assert q_shape == (2, lq + lq % 2, 2, width) and k_shape == (2, lk + lk % 2, 2, width)
    np.testing.assert_array_equal(key_lengths, [lk, lk])


# --- fallbacks and "auto" ------------------------------------------------------------------------


def test_unsupported_kernel_falls_back_to_xla_once_logged(caplog):
    q, k, v = _case(2, 2, 50, 40)
    mask = np.tril(np.ones((50, 40), bool), k=-10)  # varies over queries: no kernel takes it
    expected = dot_product_attention(q, k, v, mask=mask, implementation="xla")
    with caplog.at_level(logging.WARNING, logger=attention_kernels.__name__):
        for implementation in ["cudnn", "cudnn", "splash"]:  # cudnn: not a GPU; splash: no TPU
            out = dot_product_attention(q, k, v, mask=mask, implementation=implementation)
            np.testing.assert_array_equal(out, expected)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # the second cudnn call adds nothing
    assert "'cudnn'" in messages[0] and "backend is cpu" in messages[0] and "'xla'" in messages[0]
    assert "'splash'" in messages[1] and "interpret_mode()" in messages[1]


def test_splash_checker_names_the_problem():
    q, k, v = _abstract(1, 77, 77, dtype=jnp.float32)
    assert "TPU kernel" in splash_unsupported(q, k, v, None, None, False)
    with interpret_mode():
        assert splash_unsupported(q, k, v, None, None, False) is None
        assert "float16" in splash_unsupported(*_abstract(1, 77, 77, dtype=jnp.float16), None,
                                               None, False)  # fmt: skip
        assert "Lq=80 > Lk=77" in splash_unsupported(*_abstract(1, 80, 77), None, None, True)
        mask = np.ones((1, 1, 77, 77), bool)
        assert "varies over queries" in splash_unsupported(q, k, v, mask, None, False)
    with interpret_mode(), interpret_mode(False):
        assert "TPU kernel" in splash_unsupported(q, k, v, None, None, False)


@pytest.mark.parametrize(
    "backend,dtype,lq,chosen",
    [("tpu", jnp.float32, 600, "splash"), ("tpu", jnp.float32, 64, None),
     ("gpu", jnp.bfloat16, 64, "cudnn"), ("gpu", jnp.float32, 64, None),
     ("cpu", jnp.float32, 600, None)],
)  # fmt: skip
def test_auto_picks_the_backends_kernel(monkeypatch, on_gpu, backend, dtype, lq, chosen):
    """TPU: splash for long sequences only (short ones stay materialised); GPU: cuDNN where its
    checks pass (fp32 falls back); CPU: no kernel."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    called = []
    for name, kernel in list(KERNELS.items()):

        def attend(*args, _name=name, **kw):
            called.append(_name)
            return dot_product_attention(*args, implementation="xla", **kw)

        monkeypatch.setitem(KERNELS, name, Kernel(kernel.unsupported, attend))
    q, k, v = (jnp.asarray(x, dtype) for x in _case(1, 2, lq, 500))
    out = dot_product_attention(q, k, v, implementation="auto")
    expected = dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert called == ([chosen] if chosen else [])


def test_attention_module_runs_splash():
    """diffusers' `Attention` (as the UNets hold it) with reference attention's key bias."""
    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.standard_normal((2, 200, 64)), jnp.float32)
    context = jnp.concatenate([hidden, jnp.asarray(rng.standard_normal((2, 200, 64)))], axis=1)
    bias = _reference_bias(200, np.log(0.7))
    module = Attention(query_dim=64, heads=2, dim_head=32, attention_implementation="xla")
    params = module.init(jax.random.key(0), hidden, context, bias)
    expected = module.apply(params, hidden, context, bias)
    with interpret_mode():
        out = module.clone(attention_implementation="splash").apply(params, hidden, context, bias)
    assert relative_error(out, expected) <= FP32_TOLERANCE


def test_splash_kernels_built_under_jit_serve_later_traces():
    """The kernel cache is filled inside a jit trace; a second program must not meet its
    tracers (the mask tables are made concrete)."""
    attention_kernels._splash_kernel.cache_clear()
    q, k, v = _case(1, 2, 100, 100)
    expected = dot_product_attention(q, k, v, implementation="xla")
    with interpret_mode():
        for factor in (1.0, 2.0):  # two programs, one kernel
            attend = jax.jit(
                lambda *a, f=factor: f * dot_product_attention(*a, implementation="splash")
            )
            assert relative_error(attend(q, k, v), factor * expected) <= FP32_TOLERANCE
    assert attention_kernels._splash_kernel.cache_info().hits == 1
