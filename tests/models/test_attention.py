"""The attention implementations agree with a float64 numpy reference (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.models import attention
from mv2_jax.models.attention import dot_product_attention
from tests.reference import relative_error


def _reference(q, k, v, mask=None, scale=None, key_bias=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if key_bias is not None:
        s = s + np.asarray(key_bias, np.float64)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(lq, lk, heads=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, lq, heads, dim), np.float32)
    k = rng.standard_normal((2, lk, heads, dim), np.float32)
    v = rng.standard_normal((2, lk, heads, dim), np.float32)
    return q, k, v


@pytest.mark.parametrize("implementation", ["xla", "chunked", "cudnn", "auto"])
@pytest.mark.parametrize("lq,lk", [(64, 64), (77, 77), (300, 77), (1000, 1000), (16, 700)])
def test_implementations_match_reference(implementation, lq, lk):
    q, k, v = _qkv(lq, lk)
    out = dot_product_attention(
        q, k, v, implementation=implementation, query_chunk_size=128, key_chunk_size=96
    )
    assert relative_error(out, _reference(q, k, v)) <= 1e-5


def test_chunked_blocks_that_do_not_divide_the_sequence():
    q, k, v = _qkv(333, 517)
    out = jax.jit(
        lambda *a: dot_product_attention(
            *a, implementation="chunked", query_chunk_size=100, key_chunk_size=64
        )
    )(q, k, v)
    assert relative_error(out, _reference(q, k, v)) <= 1e-5


@pytest.mark.parametrize("implementation", ["xla", "chunked", "cudnn"])
@pytest.mark.parametrize("lk", [40, 517])
def test_key_bias_scales_the_weight_of_keys(implementation, lk):
    q, k, v = _qkv(50, lk)
    bias = np.zeros(lk, np.float32)
    bias[lk // 2 :] = np.log(0.3)
    bias[:3] = -1e30  # a dropped key
    out = dot_product_attention(
        q, k, v, key_bias=bias, implementation=implementation, key_chunk_size=64
    )
    assert relative_error(out, _reference(q, k, v, key_bias=bias)) <= 1e-5
    with pytest.raises(ValueError, match="key_bias"):
        dot_product_attention(q, k, v, key_bias=bias[:-1], implementation=implementation)


@pytest.mark.parametrize("implementation", ["xla", "chunked", "cudnn"])
def test_causal_and_padding_masks(implementation):
    q, k, v = _qkv(12, 12)
    keep = np.ones((2, 1, 1, 12), bool)
    keep[1, ..., 9:] = False
    causal = np.tril(np.ones((12, 12), bool))
    expected = _reference(q, k, v, mask=np.logical_and(keep, causal))
    out = dot_product_attention(q, k, v, mask=keep, is_causal=True, implementation=implementation)
    assert relative_error(out, expected) <= 1e-5


def test_bf16_inputs_keep_fp32_softmax():
    q, k, v = _qkv(256, 256)
    out = dot_product_attention(
        *(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), implementation="chunked"
    )
    assert out.dtype == jnp.bfloat16
    # measured 6.0e-3: bf16 rounding of inputs and output only
    assert relative_error(np.asarray(out, np.float32), _reference(q, k, v)) <= 1e-2


def test_auto_tpu_picks_as_auto_does_on_a_tpu(monkeypatch):
    """ "auto:tpu" (a CPU plan of a TPU run): splash only where a TPU's "auto" takes it, the long
    sequences; temporal attention's 32 frames and CLIP's 77 tokens run materialised."""
    chosen = []
    real = attention._materialised
    monkeypatch.setattr(
        attention, "_materialised", lambda *a, **k: chosen.append("xla") or real(*a, **k)
    )
    monkeypatch.setattr(attention, "KERNELS", {"splash": _Recording(chosen, real)})
    for lq, lk in ((32, 32), (300, 77), (1024, 1024)):
        q, k, v = _qkv(lq, lk, heads=1)
        out = dot_product_attention(q, k, v, implementation="auto:tpu")
        assert relative_error(out, _reference(q, k, v)) <= 1e-5
    assert chosen == ["xla", "xla", "splash"]


class _Recording:
    """A stand-in kernel that records its use and computes the plain form."""

    def __init__(self, chosen, materialised):
        self.chosen, self.materialised = chosen, materialised

    def unsupported(self, *args):
        return None

    def attend(self, q, k, v, *, mask, key_bias, is_causal, scale):
        self.chosen.append("splash")
        return self.materialised(q, k, v, scale, mask, key_bias)


def test_unknown_implementation_is_rejected():
    q, k, v = _qkv(4, 4)
    with pytest.raises(ValueError, match="choose from"):
        dot_product_attention(q, k, v, implementation="flash9000")
