"""Accelerator attention kernels behind `mv2_jax.models.attention.dot_product_attention`.

  * "splash": Pallas splash attention (TPU; `interpret_mode()` runs it on CPU for tests).
  * "cudnn":  `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention, GPU).

Each kernel has a checker that says, before the kernel is called, why it cannot take a call (or
None); the entry point then falls back to its XLA forms and logs the reason once. A key bias and
key masks reach both kernels the same way, as three extra query/key features (query side 1, key
side the bias split into bf16-exact pieces), so neither kernel needs an `[Lq, Lk]` bias tensor.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mv2_jax.parallel.kernels import shard_kernel

log = logging.getLogger(__name__)

_INTERPRET = contextvars.ContextVar("mv2_pallas_interpret", default=False)
_LANES = 128  # TPU vector lanes: splash blocks and Mosaic's minor dims come in multiples of this
_BIAS_PIECES = 3  # bf16 pieces of a key bias: 3 × 8 mantissa bits hold an fp32 value exactly


@contextlib.contextmanager
def interpret_mode(enabled: bool = True) -> Iterator[None]:
    """Runs the Pallas kernels in interpret mode (any backend, CPU included) inside the block.
    Read when a call is traced: a function jitted outside the block keeps what it was traced
    with."""
    token = _INTERPRET.set(enabled)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


@functools.cache  # the cache is the "once": one warning per distinct reason
def warn_fallback(implementation: str, reason: str, fallback: str) -> None:
    log.warning(
        "attention %r cannot take this call: %s. Using %r.", implementation, reason, fallback
    )


# ---------------------------------------------------------------------------------------------
# Key bias and key masks as extra query/key features.


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _floors(dtype) -> tuple[float, float]:
    """Additive values for masked and for padded keys: finite (no inf − inf in an online
    softmax), far enough below any score that their weight is exactly 0, and padded below
    masked so a row whose every real key is masked still averages the real keys, as the XLA
    form does."""
    biggest = float(jnp.finfo(dtype).max)
    return -biggest / 8, -biggest / 4


def _key_mask_problem(mask, query: jax.Array, key: jax.Array) -> str | None:
    """Why `mask` is not a key mask `[B|1, H|1, 1, Lk]` (the only masks the kernels take)."""
    if mask is None:
        return None
    (b, _, h, _), lk = query.shape, key.shape[1]
    *lead, rows, keys = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    per_key = len(lead) == 2 and lead[0] in (1, b) and lead[1] in (1, h) and rows == 1
    if not (per_key and keys == lk):
        return (
            f"mask {tuple(mask.shape)} varies over queries; the kernels take key masks "
            f"[B|1, H|1, 1, Lk={lk}] and is_causal"
        )
    return None


def _key_additive(mask, key_bias, lk: int, padded_lk: int, dtype, unit: float = 1.0):
    """The per-key additive term `[B|1, H|1, padded_lk]` (fp32) in units of the kernel's scores
    (which it multiplies by `unit` before the softmax), or None when every key counts as is."""
    if mask is None and key_bias is None and padded_lk == lk:
        return None
    masked, padded = _floors(dtype)
    if key_bias is None:
        additive = jnp.zeros((1, 1, lk), jnp.float32)
    else:
        additive = key_bias[None, None] / unit
    if mask is not None:
        keep = jnp.reshape(mask, (1,) * (4 - mask.ndim) + tuple(mask.shape))[:, :, 0, :]
        additive = jnp.where(keep.astype(bool), additive, masked)
    additive = jnp.maximum(additive, masked)  # -inf or -1e30 in fp16 would overflow the pieces
    pad = ((0, 0), (0, 0), (0, padded_lk - lk))
    return jnp.pad(additive, pad, constant_values=padded)


def _bf16_pieces(x: jax.Array) -> jax.Array:
    """`x [..]` fp32 as `[.., 3]` bf16-exact pieces summing to `x`, so the folded bias stays
    exact whatever precision the kernel's matmul runs at (TPU MXUs take bf16 passes)."""
    pieces = []
    for _ in range(_BIAS_PIECES):
        piece = x.astype(jnp.bfloat16).astype(jnp.float32)
        pieces.append(piece)
        x = x - piece
    return jnp.stack(pieces, axis=-1)


def _fold_key_additive(query, key, additive, head_multiple: int):
    """`query [B,Lq,H,D]`, `key [B,Lk,H,D]`, `additive [B|1,H|1,Lk]` → query and key with
    `q'·k' = q·k + additive` and their head dim padded to `head_multiple`."""
    b, lq, h, _ = query.shape
    lk = key.shape[1]
    ones = jnp.ones((b, lq, h, _BIAS_PIECES), query.dtype)
    pieces = jnp.swapaxes(_bf16_pieces(additive), 1, 2).astype(key.dtype)  # [B|1, Lk, H|1, 3]
    pieces = jnp.broadcast_to(pieces, (b, lk, h, _BIAS_PIECES))
    query, key = jnp.concatenate([query, ones], -1), jnp.concatenate([key, pieces], -1)
    return _pad_head(query, head_multiple), _pad_head(key, head_multiple)


def _pad_tokens(x: jax.Array, length: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _pad_head(x: jax.Array, multiple: int) -> jax.Array:
    pad = _round_up(x.shape[-1], multiple) - x.shape[-1]
    return jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, pad),)) if pad else x


def _same_dtype_problem(query, key, value, allowed: tuple, kernel: str, fix: str) -> str | None:
    dtypes = {jnp.dtype(x.dtype) for x in (query, key, value)}
    names = "/".join(jnp.dtype(d).name for d in allowed)
    if len(dtypes) != 1 or next(iter(dtypes)) not in {jnp.dtype(d) for d in allowed}:
        got = ", ".join(sorted(d.name for d in dtypes))
        return f"{kernel} takes {names} query/key/value of one dtype, got {got}: {fix}"
    return None


# ---------------------------------------------------------------------------------------------
# Splash attention (TPU Pallas).


class SplashBlocks(NamedTuple):
    padded_lq: int
    padded_lk: int
    block_q: int
    block_kv: int


_BLOCK_CHOICES = (512, 256, _LANES)  # untuned on hardware: no TPU has run this yet
_MAX_PADDING = 1 / 16  # padding a length to a bigger block may waste at most this fraction


def _padded_and_block(length: int) -> tuple[int, int]:
    """The largest block whose padding wastes ≤ 1/16 of `length` (else 128): 5,625 tokens (75²)
    → 5,632 in blocks of 512; 77 text tokens → 128."""
    for block in _BLOCK_CHOICES:
        padded = _round_up(length, block)
        if block == _LANES or padded - length <= length * _MAX_PADDING:
            return padded, block
    raise AssertionError("unreachable: the last choice always fits")


def splash_blocks(lq: int, lk: int) -> SplashBlocks:
    """Padded lengths and block sizes for `Lq` queries and `Lk` keys (padded keys are masked)."""
    (padded_lq, block_q), (padded_lk, block_kv) = _padded_and_block(lq), _padded_and_block(lk)
    return SplashBlocks(padded_lq, padded_lk, block_q, block_kv)


def _splash_module():
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention
    except ImportError:
        return None
    return splash_attention


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, blocks: SplashBlocks, causal_offset: int | None, interpret: bool):
    """One example's kernel `[H, Lq, D] → [H, Lq, Dv]`; the mask is static (full, or causal
    with the diagonal bottom-right), so splash skips the blocks it rules out."""
    splash = _splash_module()
    shape = (blocks.padded_lq, blocks.padded_lk)
    if causal_offset is None:
        mask = splash.FullMask(shape)
    else:
        mask = splash.CausalMask(shape, offset=causal_offset)
    bq, bkv = blocks.block_q, blocks.block_kv
    sizes = splash.BlockSizes(
        block_q=bq, block_kv=bkv, block_kv_compute=bkv,
        block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
        block_q_dq=bq, block_kv_dq=bkv,
    )  # fmt: skip
    with jax.ensure_compile_time_eval():  # concrete mask tables, not tracers, in the cache
        return splash.make_splash_mha_single_device(
            splash.MultiHeadMask([mask] * heads), block_sizes=sizes, interpret=interpret
        )


def splash_unsupported(query, key, value, mask, key_bias, is_causal) -> str | None:
    """Why splash attention cannot take this call, or None."""
    del key_bias  # any [Lk] bias folds into the features
    if _splash_module() is None:
        return f"jax {jax.__version__} ships no jax.experimental.pallas.ops.tpu.splash_attention"
    backend = jax.default_backend()
    if backend != "tpu" and not _INTERPRET.get():
        return (
            f"splash attention is a TPU kernel and the backend is {backend} "
            "(tests run it under mv2_jax.models.attention_kernels.interpret_mode())"
        )
    fix = "cast the model's dtype or pick implementation='xla'"
    problem = _same_dtype_problem(query, key, value, (jnp.float32, jnp.bfloat16), "splash", fix)
    problem = problem or _key_mask_problem(mask, query, key)
    lq, lk = query.shape[1], key.shape[1]
    if problem is None and is_causal and lq > lk:
        problem = f"is_causal with Lq={lq} > Lk={lk} leaves the first queries without keys"
    return problem


def splash_attention(query, key, value, *, mask, key_bias, is_causal, scale) -> jax.Array:
    """`query [B,Lq,H,D]`, `key/value [B,Lk,H,D]` → `[B,Lq,H,D]` through splash attention.

    Lengths are padded to whole blocks, padded keys masked through the folded key features;
    head dims are padded to 128 lanes (Mosaic's minor tiles, as MaxDiffusion does). Splash
    takes no scale, so the query is scaled first (in fp32, then cast back). On a mesh the
    kernel runs in a `shard_map` over the batch's and heads' axes (XLA would gather its inputs
    onto every device): see `mv2_jax.parallel.kernels.shard_kernel`."""
    _, lq, _, dim = query.shape
    lk = key.shape[1]
    blocks = splash_blocks(lq, lk)
    query = (query.astype(jnp.float32) * scale).astype(query.dtype)

    query = _pad_tokens(query, blocks.padded_lq)
    key, value = _pad_tokens(key, blocks.padded_lk), _pad_tokens(value, blocks.padded_lk)
    additive = _key_additive(mask, key_bias, lk, blocks.padded_lk, query.dtype)
    if additive is None:
        query, key = _pad_head(query, _LANES), _pad_head(key, _LANES)
    else:
        query, key = _fold_key_additive(query, key, additive, _LANES)
    value = _pad_head(value, _LANES)
    causal_offset, interpret = lk - lq if is_causal else None, _INTERPRET.get()

    def attend(query, key, value):  # [B, H, L, D], on a mesh each device's shard of B and H
        kernel = _splash_kernel(query.shape[1], blocks, causal_offset, interpret)
        return jax.vmap(kernel)(query, key, value)

    heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
    arrays = [heads_first(query), heads_first(key), heads_first(value)]
    # Frames fold into the batch (spatial and temporal attention alike): split it like them.
    out = shard_kernel(attend, arrays, ("video_rows", "heads"), name="splash attention")
    return heads_first(out)[:, :lq, :, :dim]


# ---------------------------------------------------------------------------------------------
# cuDNN flash attention (GPU) through jax.nn.dot_product_attention.

_CUDNN_HEAD_MULTIPLE = 8


def _compute_capability() -> tuple[int, int] | None:
    version = getattr(jax.devices()[0], "compute_capability", None)
    try:
        major, minor = str(version).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None  # not a CUDA device (ROCm reports gfx names)


def _cudnn_head_width(dim: int, folded: bool) -> int:
    return _round_up(dim + (_BIAS_PIECES if folded else 0), _CUDNN_HEAD_MULTIPLE)


def cudnn_unsupported(query, key, value, mask, key_bias, is_causal) -> str | None:
    """Why cuDNN flash attention (as jax 0.10–0.12 call it) cannot take this call, or None."""
    backend = jax.default_backend()
    if backend != "gpu":
        return f"cuDNN attention needs an NVIDIA GPU and the backend is {backend}"
    capability = _compute_capability()
    if capability is None or capability < (8, 0):
        return (
            f"cuDNN flash attention needs CUDA compute capability ≥ 8.0, this GPU has {capability}"
        )
    fix = "run the model in bf16 (dtype=jnp.bfloat16) or pick implementation='xla'"
    problem = _same_dtype_problem(query, key, value, (jnp.float16, jnp.bfloat16), "cuDNN", fix)
    problem = problem or _key_mask_problem(mask, query, key)
    if problem:
        return problem
    lq, lk, dim = query.shape[1], key.shape[1], query.shape[-1]
    if is_causal and lq != lk:
        return (
            f"is_causal with Lq={lq} ≠ Lk={lk}: cuDNN puts the diagonal top-left, we bottom-right"
        )
    width = _cudnn_head_width(dim, mask is not None or key_bias is not None)
    limit = 256 if capability >= (9, 0) else 128
    if width > limit:
        return (
            f"head dim {dim} ({width} with the key-bias features, in multiples of 8) exceeds "
            f"cuDNN's {limit} on compute capability {capability}"
        )
    return None


def cudnn_attention(query, key, value, *, mask, key_bias, is_causal, scale) -> jax.Array:
    """`query [B,Lq,H,D]`, `key/value [B,Lk,H,D]` → `[B,Lq,H,D]` through cuDNN flash attention.

    Odd lengths are padded by one token: jax 0.10–0.12 hand cuDNN's checks a placeholder bias,
    and with a bias they refuse odd lengths once the call is differentiated, an error a later
    `jax.grad` would meet deep in jax. A padded key is cut off by `key_value_seq_lengths`
    (cuDNN's padding mask). The value is padded to the query's head width (cuDNN wants one)."""
    batch, lq, _, dim = query.shape
    lk = key.shape[1]
    padded_lq, padded_lk = _round_up(lq, 2), _round_up(lk, 2)
    query = _pad_tokens(query, padded_lq)
    key, value = _pad_tokens(key, padded_lk), _pad_tokens(value, padded_lk)
    if mask is None and key_bias is None:
        query, key = _pad_head(query, _CUDNN_HEAD_MULTIPLE), _pad_head(key, _CUDNN_HEAD_MULTIPLE)
    else:
        additive = _key_additive(mask, key_bias, lk, padded_lk, query.dtype, unit=scale)
        query, key = _fold_key_additive(query, key, additive, _CUDNN_HEAD_MULTIPLE)
    value = jnp.pad(value, ((0, 0), (0, 0), (0, 0), (0, query.shape[-1] - dim)))
    key_lengths = None if padded_lk == lk else jnp.full((batch,), lk, jnp.int32)
    out = jax.nn.dot_product_attention(
        query, key, value, scale=scale, is_causal=is_causal,
        key_value_seq_lengths=key_lengths, implementation="cudnn",
    )  # fmt: skip
    return out[:, :lq, :, :dim]


class Kernel(NamedTuple):
    unsupported: Callable[..., str | None]  # (query, key, value, mask, key_bias, is_causal)
    attend: Callable[..., jax.Array]  # (query, key, value, *, mask, key_bias, is_causal, scale)


KERNELS = {
    "splash": Kernel(splash_unsupported, splash_attention),
    "cudnn": Kernel(cudnn_unsupported, cudnn_attention),
}
