"""Splash attention on a mesh of simulated CPU devices: each device runs the kernel on its own
shard of the batch (frames folded in) and heads, with no gather.

Without the `shard_map` (the kernel called as on one device), measured on jax 0.10.2 and 0.12.1:
  * lowered for TPU (`lowering_platforms=("tpu",)`, no TPU needed), the program does not
    lower at all: "NotImplementedError: Mosaic kernels cannot be automatically partitioned.
    Please wrap the call in a shard_map." Splash on a TPU mesh failed; it did not run replicated.
  * in interpret mode on CPU, XLA all-gathers the kernel's `[B, H, L, D]` operands whole onto
    every device (8 all-gathers of f32[4, 4, 256, 128] in the 2×2 program below, over `tensor`
    and then `data`) and each device runs the whole kernel.
"""

import logging
import re

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.models import attention_kernels
from mv2_jax.models.attention import dot_product_attention
from mv2_jax.models.attention_kernels import interpret_mode
from mv2_jax.parallel import kernels
from mv2_jax.parallel.mesh import make_mesh
from tests.reference import relative_error

FP32_TOLERANCE = 1e-5
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    kernels._warned.clear()
    yield
    kernels._warned.clear()


@pytest.fixture
def kernel_heads(monkeypatch):
    """The head count of every splash kernel built: a device's share of the heads."""
    built = []
    original = attention_kernels._splash_kernel.__wrapped__

    def recording(heads, *args):
        built.append(heads)
        return original(heads, *args)

    monkeypatch.setattr(attention_kernels, "_splash_kernel", recording)
    return built


def _call(batch, heads, lq=200, lk=150, seed=0):
    """Cross-attention-like inputs with a key bias and a per-example key mask."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, lq, heads, 32), np.float32)
    k, v = (rng.standard_normal((batch, lk, heads, 32), np.float32) for _ in range(2))
    key_bias = np.where(np.arange(lk) >= lk // 2, np.log(0.5), 0).astype(np.float32)
    mask = np.ones((batch, 1, 1, lk), bool)
    mask[0, ..., 10:30] = False
    return (q, k, v), dict(key_bias=key_bias, mask=mask)


def _gradients(qkv, kw, sharding):
    """The XLA form's q/k/v gradients of a weighted sum of the attention's output, and the
    jitted gradient function (implementation static) with its inputs split by `sharding`."""

    def loss(implementation, q, k, v):
        out = dot_product_attention(q, k, v, implementation=implementation, **kw)
        return (out * np.cos(np.arange(32, dtype=np.float32))).sum()

    grad = jax.grad(loss, argnums=(1, 2, 3))
    expected = grad("xla", *qkv)
    return expected, jax.jit(grad, static_argnums=0, in_shardings=(sharding,) * 3)


def _compiled_on(mesh, spec, qkv, kw):
    """The splash call jitted with inputs and output sharded by `spec`, on `mesh`: its output
    and compiled HLO text."""
    sharding = NamedSharding(mesh, spec)

    def attend(q, k, v):
        return dot_product_attention(q, k, v, implementation="splash", **kw)

    jitted = jax.jit(attend, in_shardings=(sharding,) * 3, out_shardings=sharding)
    with interpret_mode(), jax.set_mesh(mesh):
        hlo = jitted.lower(*qkv).compile().as_text()
        return jitted(*qkv), hlo


@pytest.mark.parametrize(
    "axes,spec,local_heads",
    [
        ("data:2,tensor:2", PartitionSpec("data", None, "tensor"), 2),
        # the video UNets' [B·F, L, H, D]: frames folded into the batch, split over both
        ("data:2,frames:2,tensor:2", PartitionSpec(("data", "frames"), None, "tensor"), 2),
    ],
)
def test_splash_on_a_mesh_matches_xla_without_gathers(kernel_heads, axes, spec, local_heads):
    mesh = make_mesh(axes, jax.devices()[: 8 if "frames" in axes else 4])
    qkv, kw = _call(batch=4, heads=4)
    expected = dot_product_attention(*qkv, implementation="xla", **kw)
    out, hlo = _compiled_on(mesh, spec, qkv, kw)
    assert relative_error(out, expected) <= FP32_TOLERANCE
    assert out.sharding.spec == spec
    assert not [op for op in COLLECTIVES if f"{op}(" in hlo], "the kernel's inputs were moved"
    assert set(kernel_heads) == {local_heads}  # each device's kernel took its share of heads


def test_splash_without_the_shard_map_gathers(monkeypatch):
    """The measurement in the module docstring: the kernel called as on one device."""
    monkeypatch.setattr(
        attention_kernels, "shard_kernel", lambda kernel, arrays, *_, **__: kernel(*arrays)
    )
    qkv, kw = _call(batch=4, heads=4)
    mesh = make_mesh("data:2,tensor:2", jax.devices()[:4])
    out, hlo = _compiled_on(mesh, PartitionSpec("data", None, "tensor"), qkv, kw)
    assert relative_error(out, dot_product_attention(*qkv, implementation="xla", **kw)) <= 1e-5
    assert "all-gather(" in hlo


def test_splash_lowers_for_a_tpu_mesh(monkeypatch):
    """The program a TPU pod would compile, forward and backward: the Mosaic kernels sit in
    `shard_map`s. Without them jax refuses to lower (if a jax learns to partition Mosaic
    calls, the `raises` below fails: then measure what it does instead)."""
    mesh = make_mesh("data:2,tensor:2", jax.devices()[:4])
    sharding = NamedSharding(mesh, PartitionSpec("data", None, "tensor"))
    q = jax.ShapeDtypeStruct((4, 200, 4, 64), np.float32)
    bias = np.zeros(200, np.float32)

    def loss(q, k, v):  # the kernel itself: its checker would refuse a CPU backend
        out = attention_kernels.splash_attention(
            q, k, v, mask=None, key_bias=bias, is_causal=False, scale=0.125
        )
        return out.sum()

    def tpu_text():
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), in_shardings=(sharding,) * 3)
        return grad.trace(q, q, q).lower(lowering_platforms=("tpu",)).as_text()

    with jax.set_mesh(mesh):
        text = tpu_text()
        monkeypatch.setattr(attention_kernels, "shard_kernel", lambda k, a, *_, **__: k(*a))
        with pytest.raises(NotImplementedError, match="cannot be automatically partitioned"):
            tpu_text()
    assert text.count("tpu_custom_call") == 3  # forward, dK/dV, dQ
    assert text.count("manual_computation") == 2  # the forward's shard_map and its transpose


def test_splash_gradients_on_a_mesh():
    """The training path: gradients through the sharded kernel (splash's own backward)."""
    mesh = make_mesh("data:2,tensor:2", jax.devices()[:4])
    sharding = NamedSharding(mesh, PartitionSpec("data", None, "tensor"))
    qkv, kw = _call(batch=2, heads=2, lq=100, lk=100)

    expected, grad = _gradients(qkv, kw, sharding)
    with interpret_mode(), jax.set_mesh(mesh):
        grads = grad("splash", *qkv)
    for got, want in zip(grads, expected, strict=True):
        assert relative_error(got, want) <= FP32_TOLERANCE


def test_splash_uneven_batch_left_whole_once_logged(caplog, kernel_heads):
    """A batch of 3 on data:2 stays whole along `data` where the heads (2, split over
    `tensor`) cannot take it either (one warning for every shape); nothing is gathered, the
    numbers are the XLA form's."""
    mesh = make_mesh("data:2,tensor:2", jax.devices()[:4])
    spec = PartitionSpec(None, None, "tensor")
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        for lq in (200, 60):
            qkv, kw = _call(batch=3, heads=2, lq=lq)
            out, hlo = _compiled_on(mesh, spec, qkv, kw)
            expected = dot_product_attention(*qkv, implementation="xla", **kw)
            assert relative_error(out, expected) <= FP32_TOLERANCE
            assert "all-gather(" not in hlo
    [message] = [record.getMessage() for record in caplog.records]
    assert "splash attention" in message and "data=2" in message and "video_rows=3" in message
    assert set(kernel_heads) == {1}


def test_splash_rows_an_axis_does_not_divide_split_the_heads(caplog, kernel_heads):
    """Rows that `data` divides but `data` × `frames` does not (the 9×9 level of a 576² video's
    temporal attention: 2,592 rows on data:8 × fsdp:4 × frames:2) put `frames` on the heads:
    each device runs a quarter of the work, and the backward pass sums nothing over `frames`
    (left unused, the kernel ran twice over and its input gradients were all-reduced)."""
    mesh = make_mesh("data:2,frames:2", jax.devices()[:4])
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    qkv, kw = _call(batch=2, heads=4, lq=64, lk=64)

    expected, grad = _gradients(qkv, kw, sharding)
    warnings = caplog.at_level(logging.WARNING, logger=kernels.__name__)
    with warnings, interpret_mode(), jax.set_mesh(mesh):
        hlo = grad.lower("splash", *qkv).compile().as_text()
        grads = grad("splash", *qkv)
    for got, want in zip(grads, expected, strict=True):
        assert relative_error(got, want) <= FP32_TOLERANCE
    assert set(kernel_heads) == {2} and not caplog.records
    assert not _summing_groups(hlo), "gradients summed over devices"


def _summing_groups(hlo: str) -> list[str]:
    """The replica groups of the all-reduces in `hlo` that sum over more than one device (the
    transposed `shard_map` keeps a psum over groups of one device, which moves nothing)."""
    groups = re.findall(r"all-reduce\(.*?replica_groups=\{(\{[^=]*?\})\}", hlo)
    return [g for g in groups if any("," in group for group in re.findall(r"\{[^{}]*\}", g))]
