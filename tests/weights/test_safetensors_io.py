"""safetensors reading without torch: exact dtypes (bf16 via ml_dtypes), sharded and fp16-variant
folders, and the errors for truncated files, wrong folders and checkpoints that do not fit."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import load_file, save_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from mv2_jax.weights.safetensors_io import CheckpointFileError, read_safetensors  # noqa: E402
from tests.weights.tiny_models import tiny_pipeline, tiny_unet  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    tiny_unet().save_pretrained(folder)
    return folder


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize(
    "torch_dtype, bits",
    [
        (torch.float32, np.uint32),
        (torch.float16, np.uint16),
        (torch.bfloat16, np.uint16),
    ],
)
def test_round_trip_is_bit_exact(tmp_path, torch_dtype, bits):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(5, 7, generator=gen).to(torch_dtype),
        "b.bias": torch.randn(3, generator=gen).to(torch_dtype),
        "c.scalar": torch.tensor(1.5).to(torch_dtype),
        "d.index": torch.arange(4, dtype=torch.int64),
    }
    save_file(tensors, tmp_path / "t.safetensors")
    read = read_safetensors(tmp_path / "t.safetensors")
    assert set(read) == set(tensors)
    for name, tensor in tensors.items():
        if tensor.dtype == torch.int64:
            np.testing.assert_array_equal(read[name], tensor.numpy())
            continue
        expected_dtype = (
            ml_dtypes.bfloat16 if torch_dtype == torch.bfloat16 else tensor.numpy().dtype
        )
        assert read[name].dtype == expected_dtype and read[name].shape == tuple(tensor.shape)
        # Compare the raw bits: the reader reinterprets bytes, it never converts.
        int_dtype = {2: torch.int16, 4: torch.int32}[tensor.element_size()]
        want = tensor.view(int_dtype).numpy().view(bits)
        np.testing.assert_array_equal(np.asarray(read[name]).view(bits), want)


def test_sharded_folder_matches_single_file(tmp_path, unet_folder):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / f"{WEIGHTS}.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "sharded" / WEIGHTS).exists()
    _, sharded = mv2_jax.load_component(tmp_path / "sharded")
    _, single = mv2_jax.load_component(unet_folder)
    _assert_same(sharded, single)


@pytest.mark.parametrize("shard", [False, True])
def test_fp16_variant_files(tmp_path, unet_folder, shard):
    unet = tiny_unet().half()
    kwargs = dict(max_shard_size="100KB") if shard else {}
    unet.save_pretrained(tmp_path / "fp16", variant="fp16", **kwargs)
    names = sorted(p.name for p in (tmp_path / "fp16").iterdir())
    assert any(".fp16." in n for n in names) and WEIGHTS not in names
    _, params = mv2_jax.load_component(tmp_path / "fp16", dtype=np.float16)
    _, fp32 = mv2_jax.load_component(unet_folder)
    _assert_same(params, jax.tree.map(lambda p: np.asarray(p).astype(np.float16), fp32))


def test_truncated_file_names_the_file(tmp_path, unet_folder):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text((unet_folder / "config.json").read_text())
    data = (unet_folder / WEIGHTS).read_bytes()
    for size in (len(data) - 100, 200, 4):
        (folder / WEIGHTS).write_bytes(data[:size])
        with pytest.raises(CheckpointFileError, match=f"{WEIGHTS}.*(truncated|too short)"):
            mv2_jax.load_component(folder)


def test_truncated_or_missing_shard(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "unet", max_shard_size="100KB")
    shards = sorted((tmp_path / "unet").glob("*-of-*.safetensors"))
    shards[-1].write_bytes(shards[-1].read_bytes()[:-64])
    with pytest.raises(CheckpointFileError, match=shards[-1].name + ": truncated"):
        mv2_jax.load_component(tmp_path / "unet")
    shards[-1].unlink()
    with pytest.raises(CheckpointFileError, match=f"shard {shards[-1].name} is listed but missing"):
        mv2_jax.load_component(tmp_path / "unet")


def test_wrong_paths_say_what_to_point_at(tmp_path, unet_folder):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        mv2_jax.load_component(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="got a file; single-file checkpoints go through"):
        mv2_jax.load_component(unet_folder / WEIGHTS)
    tiny_pipeline(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match=r"pipeline folder; load one of its components"):
        mv2_jax.load_component(tmp_path / "pipe")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        mv2_jax.load_component(tmp_path / "bare")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((unet_folder / "config.json").read_text())
    (tmp_path / "no_weights" / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no diffusion_pytorch_model.safetensors.*\.bin"):
        mv2_jax.load_component(tmp_path / "no_weights")


@pytest.mark.parametrize("damage", ["missing", "wrong_shape", "extra"])
def test_checkpoint_that_does_not_fit_lists_the_key(tmp_path, unet_folder, damage):
    state = load_file(unet_folder / WEIGHTS)
    key = "down_blocks.0.attentions.0.proj_in.weight"
    if damage == "missing":
        del state[key]
    elif damage == "wrong_shape":
        state[key] = torch.zeros(3, 3)
    else:
        key = "down_blocks.0.attentions.0.proj_extra.weight"
        state[key] = torch.zeros(3, 3)
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text((unet_folder / "config.json").read_text())
    save_file(state, folder / WEIGHTS)
    with pytest.raises(WeightMismatchError) as info:
        mv2_jax.load_component(folder)
    flax_path = "down_blocks_0/attentions_0/proj_in/kernel"
    if damage == "missing":
        assert info.value.missing == [flax_path]
        assert flax_path in str(info.value)
    elif damage == "wrong_shape":
        (entry,) = info.value.misshaped
        assert entry[0].startswith(flax_path) and key in entry[0] and entry[1] == (3, 3)
        assert key in str(info.value)
    else:
        assert info.value.unexpected == [key]
        assert key in str(info.value)
