"""The one attention entry point, with selectable implementation, and diffusers' `Attention`.

Implementations (all return the same numbers to fp32 rounding):
  * "xla":     scores materialised, softmax, weighted sum; fastest for short sequences.
  * "cudnn":   cuDNN flash attention through `jax.nn.dot_product_attention` (GPU, fp16/bf16).
  * "splash":  Pallas splash attention (TPU); under `jax.set_mesh` each device runs it on its
               own shard of the batch and heads (`mv2_jax.parallel.kernels`).
  * "chunked": memory-efficient attention (Rabe & Staats 2021, arXiv:2112.05682): queries in
               blocks, keys in blocks with an online softmax, so the full score matrix never
               exists; 1024² latents (16,384 tokens) fit.
  * "auto":    "cudnn" on GPU; "splash" on TPU and "chunked" elsewhere for long sequences; else
               "xla".

The two kernels (`mv2_jax.models.attention_kernels`) are checked before they are called: a call
one cannot take (dtype, head dim, a mask over queries, no such device) runs the "chunked" / "xla"
form instead, with the reason logged once.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mv2_jax.models.attention_kernels import KERNELS, warn_fallback
from mv2_jax.models.layers import dense, group_norm

# "auto:tpu": the choice "auto" makes on a TPU, on any backend (a CPU plan of a TPU run,
# benchmarks/plan.py: splash for long sequences only, as there).
IMPLEMENTATIONS = ("auto", "auto:tpu", "xla", "cudnn", "chunked", "splash")
# Above this many score entries per (batch, head) the XLA forms switch to the chunked one.
_AUTO_CHUNK_THRESHOLD = 512 * 512
# Small blocks keep the scores in cache on CPU (measured in benchmarks/unet_step.py).
_QUERY_CHUNK = 512
_KEY_CHUNK = 256


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    key_bias: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    implementation: str = "auto",
    query_chunk_size: int | None = None,
    key_chunk_size: int | None = None,
) -> jax.Array:
    """Softmax attention. `query [B,Lq,H,D]`, `key/value [B,Lk,H,D]`, `mask` boolean and
    broadcastable to `[B,H,Lq,Lk]` (True = attend). `key_bias [Lk]` is added to every query's
    scores of that key: `log(s)` multiplies the key's unnormalised weight by `s` (−inf drops it).
    Scores and softmax are computed in fp32 whatever the input dtype (which subsumes diffusers'
    `upcast_attention`)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {implementation!r}; choose from {IMPLEMENTATIONS}"
        )
    with jax.named_scope("dot_product_attention"):  # names these ops in profiles
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        if implementation in ("auto", "auto:tpu"):
            backend = "tpu" if implementation == "auto:tpu" else jax.default_backend()
            implementation = _auto(query, key, mask, is_causal, backend)
        if key_bias is not None:
            key_bias = jnp.asarray(key_bias, jnp.float32)
            if key_bias.shape != (key.shape[1],):
                raise ValueError(f"key_bias {key_bias.shape}: expected [Lk] = ({key.shape[1]},)")
        if implementation in KERNELS:
            kernel = KERNELS[implementation]
            reason = kernel.unsupported(query, key, value, mask, key_bias, is_causal)
            if reason is None:
                return kernel.attend(
                    query, key, value, mask=mask, key_bias=key_bias, is_causal=is_causal,
                    scale=scale,
                )  # fmt: skip
            fallback = _portable(query, key, mask, is_causal)
            warn_fallback(implementation, reason, fallback)
            implementation = fallback
        if is_causal:
            lq, lk = query.shape[1], key.shape[1]
            causal = jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)
            mask = causal if mask is None else jnp.logical_and(mask, causal)
        if implementation == "chunked" and mask is None:
            return _chunked(
                query,
                key,
                value,
                scale,
                query_chunk_size or _QUERY_CHUNK,
                key_chunk_size or _KEY_CHUNK,
                key_bias,
            )
        return _materialised(query, key, value, scale, mask, key_bias)


def _auto(query, key, mask, is_causal, backend: str) -> str:
    if backend == "gpu":
        return "cudnn"
    # Splash pads to 128-token blocks: short sequences (16-frame temporal attention, CLIP's 77
    # tokens) run better materialised.
    if backend == "tpu" and query.shape[1] * key.shape[1] > _AUTO_CHUNK_THRESHOLD:
        return "splash"
    return _portable(query, key, mask, is_causal)


def _portable(query, key, mask, is_causal) -> str:
    """The XLA form for this call: "chunked" for long unmasked sequences, else "xla"."""
    long = query.shape[1] * key.shape[1] > _AUTO_CHUNK_THRESHOLD
    return "chunked" if long and mask is None and not is_causal else "xla"


def _materialised(query, key, value, scale, mask, key_bias=None):
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = scores * scale
    if key_bias is not None:
        scores = scores + key_bias
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


def _chunked(query, key, value, scale, query_chunk, key_chunk, key_bias=None):
    """Blocked attention with an online softmax over key blocks; never holds `[Lq, Lk]`."""
    b, lq, h, d = query.shape
    lk = key.shape[1]
    q = jnp.swapaxes(query, 1, 2) * jnp.asarray(scale, query.dtype)  # [B,H,Lq,D]
    k = jnp.swapaxes(key, 1, 2)
    v = jnp.swapaxes(value, 1, 2)
    query_chunk = min(query_chunk, lq)
    n_q = -(-lq // query_chunk)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, n_q * query_chunk - lq), (0, 0)))
    q_blocks = jnp.moveaxis(q.reshape(b, h, n_q, query_chunk, d), 2, 0)

    if lk <= key_chunk:

        def one_block(qb):
            s = jnp.einsum("bhqd,bhkd->bhqk", qb, k, preferred_element_type=jnp.float32)
            if key_bias is not None:
                s = s + key_bias
            p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
            return jnp.einsum("bhqk,bhkd->bhqd", p, v)
    else:
        n_k = -(-lk // key_chunk)
        pad = n_k * key_chunk - lk
        k_blocks = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, n_k, key_chunk, d)
        v_blocks = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, n_k, key_chunk, d)
        k_blocks, v_blocks = jnp.moveaxis(k_blocks, 2, 0), jnp.moveaxis(v_blocks, 2, 0)
        valid = (jnp.arange(n_k * key_chunk) < lk).reshape(n_k, key_chunk)
        bias = jnp.zeros((lk,), jnp.float32) if key_bias is None else key_bias
        bias_blocks = jnp.pad(bias, (0, pad)).reshape(n_k, key_chunk)

        def one_block(qb):
            def step(carry, kv):
                m, l, acc = carry
                kb, vb, ok, bb = kv
                s = jnp.einsum("bhqd,bhkd->bhqk", qb, kb, preferred_element_type=jnp.float32)
                if key_bias is not None:
                    s = s + bb
                if pad:  # only the last key block has padding; no select otherwise
                    s = jnp.where(ok, s, -jnp.inf)
                m_new = jnp.maximum(m, s.max(-1, keepdims=True))
                p = jnp.exp(s - m_new)
                correction = jnp.exp(m - m_new)
                l = l * correction + p.sum(-1, keepdims=True)
                pv = jnp.einsum(
                    "bhqk,bhkd->bhqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
                )
                return (m_new, l, acc * correction + pv), None

            init = (
                jnp.full((b, h, query_chunk, 1), -jnp.inf, jnp.float32),
                jnp.zeros((b, h, query_chunk, 1), jnp.float32),
                jnp.zeros((b, h, query_chunk, d), jnp.float32),
            )
            (_, l, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, valid, bias_blocks))
            return (acc / l).astype(query.dtype)

    out = jax.lax.map(one_block, q_blocks)  # [n_q, B, H, qc, D]
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, n_q * query_chunk, d)[:, :, :lq]
    return jnp.swapaxes(out, 1, 2)


class Attention(nn.Module):
    """diffusers' `Attention` (to_q / to_k / to_v / to_out.0), tokens `[B, L, C]`.

    Self-attention when `context` is None. `norm_num_groups` and `residual_connection` give the
    VAE's mid-block form (GroupNorm over channels first, input added back at the end).
    """

    query_dim: int
    heads: int
    dim_head: int
    qkv_bias: bool = False
    out_bias: bool = True
    norm_num_groups: int | None = None
    norm_eps: float = 1e-6
    residual_connection: bool = False
    rescale_output_factor: float = 1.0
    attention_implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states, context=None, key_bias=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        residual = hidden_states
        if self.norm_num_groups is not None:
            hidden_states = group_norm(
                self.norm_num_groups, self.norm_eps, name="group_norm", **kw
            )(hidden_states)
        context = hidden_states if context is None else context
        inner = self.heads * self.dim_head
        q = dense(inner, ("embed", "heads"), use_bias=self.qkv_bias, name="to_q", **kw)(
            hidden_states
        )
        k = dense(inner, ("embed", "heads"), use_bias=self.qkv_bias, name="to_k", **kw)(context)
        v = dense(inner, ("embed", "heads"), use_bias=self.qkv_bias, name="to_v", **kw)(context)
        split = lambda x: x.reshape(*x.shape[:-1], self.heads, self.dim_head)  # noqa: E731
        out = dot_product_attention(
            split(q),
            split(k),
            split(v),
            key_bias=key_bias,
            implementation=self.attention_implementation,
        )
        out = out.reshape(*out.shape[:-2], inner)
        out = dense(
            self.query_dim, ("heads", "embed"), use_bias=self.out_bias, name="to_out_0", **kw
        )(out)
        if self.residual_connection:
            out = out + residual
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out
