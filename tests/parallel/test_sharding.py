"""Sharding on 8 simulated CPU devices: a small UNet initialised straight onto data / FSDP /
tensor meshes holds fewer bytes per device, computes what one device computes, and loads from a
folder onto the mesh; meshes reject bad specs; dims that do not divide are replicated."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mv2_jax import load_component
from mv2_jax.models.unet import UNet2DConditionModel
from mv2_jax.parallel import (
    DEFAULT_RULES,
    MESH_AXES,
    batch_sharding,
    component_shardings,
    init_sharded,
    logical_specs,
    make_mesh,
    mesh_spec,
    override_rules,
    param_shardings,
    per_device_bytes,
    shard_params,
    sharded_init,
    single_device_mesh,
)
from mv2_jax.weights.orbax_io import save_params
from mv2_jax.weights.unet import unet_example_inputs

CONFIG = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
    layers_per_block=1,
)
MESHES = ["data:2,fsdp:4", "fsdp:2,tensor:4"]
# fsdp 1 → 8 on all 8 devices (the rest data parallel, which replicates params); two of these
# are shared with other tests, since every init compiles for a while on CPU.
FSDP_MESHES = {1: "data:8", 2: "data:4,fsdp:2", 4: "data:2,fsdp:4", 8: "fsdp:8"}


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**CONFIG)


@functools.cache  # each init compiles for a while on CPU; tests share them
def _init_on(spec: str) -> dict:
    unet = _unet()
    args, kwargs = unet_example_inputs(unet)
    mesh = make_mesh(spec)
    return init_sharded(unet, jax.random.key(0), args, mesh, example_kwargs=kwargs)


def _max_bytes(params) -> int:
    return max(per_device_bytes(params).values())


def _relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# --- meshes -------------------------------------------------------------------------------------


def test_make_mesh_has_all_four_auto_axes():
    mesh = make_mesh("data:2, fsdp:-1")
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "frames": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(make_mesh({"tensor": 8}).shape)["tensor"] == 8
    single = single_device_mesh()
    assert single.size == 1 and single.axis_names == MESH_AXES
    assert all(t == AxisType.Auto for t in single.axis_types)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("data:2,fsdp:2", "has 4 devices .* there are 8"),
        ({"data": 16}, "has 16 devices"),
        ("data:2,model:4", r"unknown axes \['model'\]"),
        ("data:2,data:4", "given twice"),
        ("data=8", "not `axis:size`"),
        ("data:two", "not an integer"),
        ("data:0,fsdp:8", "not ≥ 1 or -1"),
        ("data:-1,fsdp:-1", "only one axis"),
        ("data:3,fsdp:-1", "do not divide the 8 devices"),
    ],
)
def test_make_mesh_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(spec)


# --- rules and specs ----------------------------------------------------------------------------


def test_indivisible_dims_are_replicated():
    fsdp8 = make_mesh("fsdp:8")
    # A dim the axis does not divide stays whole; the next dim that asks may take the axis.
    assert mesh_spec(("embed", "embed"), (12, 16), fsdp8) == P(None, "fsdp")
    assert mesh_spec(("embed", "embed"), (12, 20), fsdp8) == P()
    # One mesh axis per param, on the largest dim it divides (ties: the first).
    assert mesh_spec(("embed", "embed"), (32, 64), fsdp8) == P(None, "fsdp")
    assert mesh_spec(("embed", "embed"), (64, 32), fsdp8) == P("fsdp")
    assert mesh_spec(("vocab", "embed"), (64, 64), fsdp8) == P("fsdp")
    # A multi-axis rule keeps its axes only while their product divides the dim.
    mesh = make_mesh("data:2,fsdp:4")
    assert batch_sharding(mesh, 4, shape=(8, 4, 4, 4)).spec == P(("data", "fsdp"))
    assert batch_sharding(mesh, 4, shape=(2, 4, 4, 4)).spec == P("data")
    assert batch_sharding(mesh, 4, shape=(3, 4, 4, 4)).spec == P()
    video = make_mesh("data:2,frames:4")
    assert batch_sharding(video, 5, frames=True, shape=(2, 8, 4, 4, 4)).spec == P("data", "frames")
    assert batch_sharding(video, 5, frames=True, shape=(2, 6, 4, 4, 4)).spec == P("data")
    # In a real UNet: the 4-channel conv_out cannot split 8 ways, but can 4 ways.
    unet = _unet()
    args, kwargs = unet_example_inputs(unet)
    specs = logical_specs(unet, args, kwargs)
    assert specs["conv_out"]["kernel"] == P(None, None, "conv_in", "conv_out")
    for spec, want in [("fsdp:8", P()), ("data:2,fsdp:4", P(None, None, None, "fsdp"))]:
        mesh = make_mesh(spec)
        kernel = jax.ShapeDtypeStruct((3, 3, 32, 4), jnp.float32)
        assert param_shardings(kernel, specs["conv_out"]["kernel"], mesh).spec == want


@pytest.mark.slow
def test_init_sharded_replicates_indivisible_params():
    params = _init_on("fsdp:8")
    assert params["conv_out"]["kernel"].sharding.spec == P()
    assert params["conv_in"]["kernel"].sharding.spec == P(None, None, None, "fsdp")


def test_rules_are_overridable():
    mesh = make_mesh("fsdp:2,tensor:4")
    assert mesh_spec(("embed", "heads"), (32, 64), mesh) == P("fsdp", "tensor")
    fsdp_only = override_rules(DEFAULT_RULES, {"heads": None, "extra": "tensor"})
    assert mesh_spec(("embed", "heads"), (32, 64), mesh, fsdp_only) == P("fsdp")
    assert mesh_spec(("extra",), (8,), mesh, fsdp_only) == P("tensor")
    with pytest.raises(ValueError, match="two rules"):
        mesh_spec(("embed",), (8,), mesh, (*DEFAULT_RULES, ("embed", None)))
    with pytest.raises(ValueError, match="not a mesh axis"):
        mesh_spec(("embed",), (8,), mesh, (("embed", "model"),))


# --- params on meshes ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", MESHES)
def test_init_sharded_holds_fewer_bytes_per_device(spec):
    sharded = _init_on(spec)
    single = sum(leaf.nbytes for leaf in jax.tree.leaves(sharded))  # all params on one device
    per_device = per_device_bytes(sharded)
    print(f"\n{spec}: single device {single} B, per device {sorted(per_device.values())}")
    assert len(per_device) == 8 and max(per_device.values()) < single
    # Partitionable threefry: the sharded init draws exactly the replicated init's numbers.
    plain = _init_on(FSDP_MESHES[1])
    assert _max_bytes(plain) == single
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_sharded_init_never_holds_the_full_params():
    unet = _unet()
    args, kwargs = unet_example_inputs(unet)
    full = sum(leaf.nbytes for leaf in jax.tree.leaves(_init_on("fsdp:8")))
    init = sharded_init(unet, args, make_mesh("fsdp:8"), example_kwargs=kwargs)
    memory = init.lower(jax.random.key(0)).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    # Per device: its output shards plus every temporary buffer of the init program.
    peak = memory.output_size_in_bytes + memory.temp_size_in_bytes
    print(f"\nfsdp:8 init per device: {peak} B (output + temp), full params {full} B")
    assert peak < full / 2


@pytest.mark.slow
def test_param_bytes_per_device_fall_as_fsdp_grows():
    sizes = {n: _max_bytes(_init_on(spec)) for n, spec in FSDP_MESHES.items()}
    print(f"\nmax param bytes per device by fsdp size: {sizes}")
    assert sizes[1] > sizes[2] > sizes[4] > sizes[8]


def _apply(params, sample, timesteps, context):
    return _unet().apply({"params": params}, sample, timesteps, context)


_apply_single_device = jax.jit(_apply)  # module level: both meshes reuse its compilation


@pytest.mark.slow
@pytest.mark.parametrize("spec", MESHES)
def test_sharded_apply_matches_single_device(spec):
    mesh = make_mesh(spec)
    params = _init_on(spec)
    keys = jax.random.split(jax.random.key(1), 3)
    sample = jax.random.normal(keys[0], (8, 8, 8, 4))
    timesteps = jax.random.uniform(keys[1], (8,), maxval=1000.0)
    context = jax.random.normal(keys[2], (8, 7, CONFIG["cross_attention_dim"]))
    host = jax.tree.map(np.asarray, params)
    want = _apply_single_device(host, sample, timesteps, context)

    shardings = jax.tree.map(lambda a: a.sharding, params)
    inputs = [batch_sharding(mesh, a.ndim, shape=a.shape) for a in (sample, timesteps, context)]
    assert inputs[0].spec == (P(("data", "fsdp")) if "data" in spec else P("fsdp"))
    sharded_apply = jax.jit(_apply, in_shardings=(shardings, *inputs), out_shardings=inputs[0])
    got = sharded_apply(params, *jax.device_put((sample, timesteps, context), tuple(inputs)))
    assert got.sharding.spec == inputs[0].spec
    error = _relative_error(got, want)
    print(f"\n{spec}: relative error vs one device {error:.2e}")
    assert error <= 1e-5
    # Host params placed with shard_params land on the same shardings and give the same output.
    placed = shard_params(host, shardings)
    assert jax.tree.map(lambda a: a.sharding, placed) == shardings
    again = sharded_apply(placed, *jax.device_put((sample, timesteps, context), tuple(inputs)))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(got))


@pytest.mark.slow
def test_load_component_onto_mesh(tmp_path):
    params = jax.tree.map(np.asarray, _init_on(FSDP_MESHES[1]))
    config = {"_class_name": "UNet2DConditionModel", **CONFIG}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_params(tmp_path / "params", params)

    mesh = make_mesh("data:2,fsdp:4")
    shardings = component_shardings(tmp_path, mesh)
    _, loaded = load_component(tmp_path, shardings=shardings)
    for got, want, sharding in zip(
        jax.tree.leaves(loaded), jax.tree.leaves(params), jax.tree.leaves(shardings)
    ):
        assert isinstance(sharding, NamedSharding) and got.sharding == sharding
        np.testing.assert_array_equal(np.asarray(got), want)
    assert shardings["conv_in"]["kernel"].spec == P(None, None, None, "fsdp")
    assert max(per_device_bytes(loaded).values()) < sum(a.nbytes for a in jax.tree.leaves(params))
