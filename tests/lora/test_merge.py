"""`merge_lora` / `lora_deltas` mechanics on a hand-made param tree: the update against numpy
(linear, 3×3 conv, 1×1 conv as Dense), input never changed, new scales never recompile, sharded
params keep their sharding, bf16 params get one rounding of an fp32 sum."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mv2_jax.lora import lora_deltas, merge_lora, parse_lora, resolve_lora

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


PARAMS = {
    "lin": {"kernel": _randn(6, 8), "bias": _randn(8)},  # Dense [in, out]
    "conv": {"kernel": _randn(3, 3, 4, 8)},  # Conv [kh, kw, in, out]
    "proj": {"kernel": _randn(8, 4)},  # a 1×1 PyTorch conv held as Dense
}
STATE = {  # diffusers layout; PyTorch shapes [out, in, *window]
    "unet.lin.lora_A.weight": _randn(2, 6),
    "unet.lin.lora_B.weight": _randn(8, 2),
    "unet.lin.alpha": np.array(3.0, np.float32),
    "unet.conv.lora_A.weight": _randn(3, 4, 3, 3),
    "unet.conv.lora_B.weight": _randn(8, 3, 1, 1),
    "unet.proj.lora_A.weight": _randn(2, 8, 1, 1),
    "unet.proj.lora_B.weight": _randn(4, 2, 1, 1),
}


def _bound(state=STATE, params=PARAMS):
    return resolve_lora(parse_lora(state), "unet", params)


def _expected(scale: float) -> dict:
    s = STATE
    lin = 1.5 * s["unet.lin.lora_B.weight"] @ s["unet.lin.lora_A.weight"]  # alpha 3 / rank 2
    conv = np.einsum(
        "or,rikl->klio", s["unet.conv.lora_B.weight"][..., 0, 0], s["unet.conv.lora_A.weight"]
    )
    proj = s["unet.proj.lora_B.weight"][..., 0, 0] @ s["unet.proj.lora_A.weight"][..., 0, 0]
    return {
        "lin": PARAMS["lin"]["kernel"] + scale * lin.T,
        "conv": PARAMS["conv"]["kernel"] + scale * conv,
        "proj": PARAMS["proj"]["kernel"] + scale * proj.T,
    }


def test_merge_matches_numpy_and_leaves_the_input_alone():
    before = jax.tree.map(np.copy, PARAMS)
    fused = merge_lora(PARAMS, [(_bound(), 0.7)])
    for name, want in _expected(0.7).items():
        np.testing.assert_allclose(fused[name]["kernel"], want, rtol=1e-6, atol=1e-6)
    assert fused["lin"]["bias"] is PARAMS["lin"]["bias"]  # untouched: the same array
    jax.tree.map(np.testing.assert_array_equal, PARAMS, before)


def test_two_adapters_add_and_deltas_are_fp32():
    bound = _bound()
    deltas = lora_deltas(PARAMS, [(bound, 0.5), (bound, 0.25)])
    for name, want in _expected(0.75).items():
        assert deltas[(name, "kernel")].dtype == jnp.float32
        np.testing.assert_allclose(
            PARAMS[name]["kernel"] + deltas[(name, "kernel")], want, rtol=1e-6, atol=1e-6
        )


def test_a_new_scale_does_not_recompile():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    params = {"odd": {"kernel": _randn(5, 7)}}  # shapes of this test only: not compiled yet
    state = {"odd.lora_A.weight": _randn(3, 5), "odd.lora_B.weight": _randn(7, 3)}
    bound = _bound(state, params)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        merge_lora(params, [(bound, 0.1)])
        first = len(compiles)
        for scale in (0.2, -1.0, 3.0):
            fused = merge_lora(params, [(bound, scale)])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first >= 1 and len(compiles) == first
    want = (
        params["odd"]["kernel"] + 3.0 * (state["odd.lora_B.weight"] @ state["odd.lora_A.weight"]).T
    )
    np.testing.assert_allclose(fused["odd"]["kernel"], want, rtol=1e-5, atol=1e-6)


def test_sharded_params_stay_sharded():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    shardings = {
        "lin": {"kernel": PartitionSpec(None, "model"), "bias": PartitionSpec("model")},
        "conv": {"kernel": PartitionSpec(None, None, "data", "model")},
        "proj": {"kernel": PartitionSpec("model", None)},
    }
    sharded = jax.tree.map(
        lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)),
        PARAMS,
        shardings,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    fused = merge_lora(sharded, [(_bound(params=sharded), 0.7)])
    for name, want in _expected(0.7).items():
        assert fused[name]["kernel"].sharding == sharded[name]["kernel"].sharding
        np.testing.assert_allclose(np.asarray(fused[name]["kernel"]), want, rtol=1e-6, atol=1e-6)


def test_bf16_params_round_once():
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), PARAMS)
    fused = merge_lora(params, [(_bound(params=params), 0.7)])
    delta = lora_deltas(params, [(_bound(params=params), 0.7)])[("lin", "kernel")]
    assert fused["lin"]["kernel"].dtype == jnp.bfloat16
    want = (params["lin"]["kernel"].astype(jnp.float32) + delta).astype(jnp.bfloat16)
    np.testing.assert_array_equal(fused["lin"]["kernel"], want)
