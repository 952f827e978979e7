"""orbax params: round trip, dtype on read, restore straight onto a mesh, and checkpoints that do
not fit the config."""

import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.orbax_io import restore_params, save_params, stored_shapes
from mv2_jax.weights.safetensors_io import CheckpointFileError


def _params(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {
        "conv_in": {"kernel": rng.normal(size=(3, 3, 4, 16)).astype(dtype)},
        "blocks_0": {
            "proj": {"kernel": rng.normal(size=(16, 32)).astype(dtype)},
            "norm": {"scale": rng.normal(size=(16,)).astype(dtype)},
        },
    }


def _shapes(params, dtype=None):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype or a.dtype), params)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_round_trip_is_exact(tmp_path, dtype):
    params = _params(dtype)
    save_params(tmp_path / "params", params)
    restored = restore_params(tmp_path / "params", _shapes(params))
    for path, want in jax.tree_util.tree_leaves_with_path(params):
        got = dict(jax.tree_util.tree_leaves_with_path(restored))[path]
        assert got.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got), want)
        assert got.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert {tuple(m.shape) for m in stored_shapes(tmp_path / "params").values()} == {
        (3, 3, 4, 16),
        (16, 32),
        (16,),
    }


def test_dtype_cast_on_read(tmp_path):
    params = _params()
    save_params(tmp_path / "params", params)
    restored = restore_params(tmp_path / "params", _shapes(params), dtype=jnp.bfloat16)
    kernel = restored["blocks_0"]["proj"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    expected = params["blocks_0"]["proj"]["kernel"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(kernel), expected)


def test_restore_onto_mesh_shards_each_param(tmp_path):
    params = _params()
    save_params(tmp_path / "params", params)
    mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"))
    shardings = {
        "conv_in": {"kernel": NamedSharding(mesh, PartitionSpec(None, None, None, "fsdp"))},
        "blocks_0": {
            "proj": {"kernel": NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))},
            "norm": {"scale": NamedSharding(mesh, PartitionSpec())},
        },
    }
    restored = restore_params(tmp_path / "params", _shapes(params), shardings=shardings)
    kernel = restored["blocks_0"]["proj"]["kernel"]
    assert kernel.sharding == shardings["blocks_0"]["proj"]["kernel"]
    # Each device holds only its 4×16 block of the 16×32 kernel.
    assert {s.data.shape for s in kernel.addressable_shards} == {(4, 16)}
    np.testing.assert_array_equal(np.asarray(kernel), params["blocks_0"]["proj"]["kernel"])
    np.testing.assert_array_equal(
        np.asarray(restored["conv_in"]["kernel"]), params["conv_in"]["kernel"]
    )
    # One sharding for every param works too.
    replicated = restore_params(
        tmp_path / "params", _shapes(params), shardings=NamedSharding(mesh, PartitionSpec())
    )
    assert len(replicated["conv_in"]["kernel"].addressable_shards) == 8


def test_checkpoint_for_another_config_lists_every_difference(tmp_path):
    params = _params()
    save_params(tmp_path / "params", params)
    shapes = _shapes(params)
    del shapes["blocks_0"]["norm"]
    shapes["blocks_0"]["extra"] = {"bias": jax.ShapeDtypeStruct((16,), jnp.float32)}
    shapes["conv_in"]["kernel"] = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32)
    with pytest.raises(WeightMismatchError) as info:
        restore_params(tmp_path / "params", shapes)
    err = info.value
    assert err.missing == ["blocks_0/extra/bias"]
    assert err.unexpected == ["blocks_0/norm/scale"]
    assert err.misshaped == [("conv_in/kernel", (3, 3, 4, 16), (3, 3, 4, 8))]
    assert "convert/to_flax.py" in str(err)


def test_missing_or_broken_checkpoint_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        restore_params(tmp_path / "nowhere", _shapes(_params()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFileError, match="no orbax params found"):
        restore_params(tmp_path / "empty", _shapes(_params()))


# When one read fails, orbax abandons the reads still in flight; as they finish, their callbacks
# meet a closed event loop ("Event loop is closed", reported as unraisable). Harmless; the short
# wait keeps that report inside this test instead of whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_data_files_raise_naming_the_folder(tmp_path):
    params = _params()
    save_params(tmp_path / "params", params)
    data = [p for p in (tmp_path / "params").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert data
    for path in data:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    with pytest.raises(CheckpointFileError, match=r"params: cannot read the params"):
        restore_params(tmp_path / "params", _shapes(params))
    time.sleep(0.5)


def test_save_refuses_to_overwrite(tmp_path):
    save_params(tmp_path / "params", _params())
    with pytest.raises(FileExistsError, match="already exists"):
        save_params(tmp_path / "params", _params())
    save_params(tmp_path / "params", _params(np.float16), force=True)
    restored = restore_params(tmp_path / "params", _shapes(_params(np.float16)))
    assert restored["conv_in"]["kernel"].dtype == np.float16
