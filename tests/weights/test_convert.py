"""`convert/to_flax.py`: component and pipeline folders → orbax, read back by `load_component` to
the very params of the direct load; bf16 storage; and the command line's errors."""

import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.weights.orbax_io import stored_shapes  # noqa: E402
from tests.weights.tiny_models import CLI, load_cli, tiny_pipeline, tiny_unet  # noqa: E402

to_flax = load_cli()


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    tiny_unet().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    return folder, tiny_pipeline(folder)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_help_explains_every_flag():
    result = subprocess.run(
        [sys.executable, str(CLI), "--help"], capture_output=True, text=True, check=True
    )
    flags = ("--out", "--dtype", "--config", "--model-type", "--lora", "--lora-scale", "path")
    for flag in (*flags, "--overwrite"):
        assert flag in result.stdout
    for word in ("model_index.json", "weights_only", "sdxl_base", "bf16", "load_component"):
        assert word in result.stdout


def test_component_folder_round_trip(tmp_path, unet_folder, capsys):
    assert to_flax.main([str(unet_folder), "--out", str(tmp_path / "out")]) == 0
    assert "UNet2DConditionModel" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "params"]
    module, params = mv2_jax.load_component(tmp_path / "out")
    direct_module, direct = mv2_jax.load_component(unet_folder)
    assert module == direct_module
    _assert_same(params, direct)


def test_sharded_load_onto_a_mesh(tmp_path, unet_folder):
    """Both forms (safetensors folder and orbax) land each param on the requested sharding."""
    assert to_flax.main([str(unet_folder), "--out", str(tmp_path / "out")]) == 0
    _, direct = mv2_jax.load_component(unet_folder)
    mesh = jax.make_mesh((8,), ("fsdp",))

    def sharding(p):
        split = p.ndim >= 2 and p.shape[-1] % 8 == 0
        spec = PartitionSpec(*[None] * (p.ndim - 1), "fsdp") if split else PartitionSpec()
        return NamedSharding(mesh, spec)

    shardings = jax.tree.map(sharding, direct)
    for folder in (unet_folder, tmp_path / "out"):
        _, params = mv2_jax.load_component(folder, shardings=shardings)
        _assert_same(params, direct)
        placed = jax.tree.map(lambda p, s: p.sharding == s, params, shardings)
        assert all(jax.tree.leaves(placed))
    kernel = params["conv_in"]["kernel"]  # [3, 3, 4, 16]: 2 output channels per device
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 4, 2)}


def test_bf16_storage(tmp_path, unet_folder):
    assert to_flax.main([str(unet_folder), "--out", str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    dtypes = {m.dtype for m in stored_shapes(tmp_path / "out" / "params").values()}
    assert dtypes == {np.dtype(ml_dtypes.bfloat16)}
    _, params = mv2_jax.load_component(tmp_path / "out", dtype=jnp.bfloat16)
    _, direct = mv2_jax.load_component(unet_folder, dtype=jnp.bfloat16)
    _assert_same(params, direct)
    # Read as fp32, the bf16-stored values come back widened, unchanged.
    _, widened = mv2_jax.load_component(tmp_path / "out")
    assert jax.tree.leaves(widened)[0].dtype == jnp.float32
    _assert_same(widened, jax.tree.map(lambda p: p.astype(jnp.float32), direct))


def test_pipeline_folder(tmp_path, pipeline, capsys):
    src, _ = pipeline
    assert to_flax.main([str(src), "--out", str(tmp_path / "out")]) == 0
    log = capsys.readouterr().out
    for line in ("unet: UNet2DConditionModel", "vae: AutoencoderKL", "text_encoder: CLIPTextModel"):
        assert line in log
    assert "tokenizer: copied" in log and "scheduler: copied" in log
    out = tmp_path / "out"
    assert json.loads((out / "model_index.json").read_text()) == json.loads(
        (src / "model_index.json").read_text()
    )
    for name in ("tokenizer", "scheduler"):
        for file in (src / name).iterdir():
            assert (out / name / file.name).read_bytes() == file.read_bytes()
    for name in ("unet", "vae", "text_encoder"):
        _, params = mv2_jax.load_component(out / name)
        _assert_same(params, mv2_jax.load_component(src / name)[1])


def test_pipeline_component_of_unsupported_class_is_left_out(tmp_path, pipeline, capsys):
    src, _ = pipeline
    copy = tmp_path / "pipe"
    shutil.copytree(src, copy)
    (copy / "safety_checker").mkdir()
    (copy / "safety_checker" / "config.json").write_text(
        json.dumps({"architectures": ["StableDiffusionSafetyChecker"]})
    )
    index = json.loads((copy / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (copy / "model_index.json").write_text(json.dumps(index))
    assert to_flax.main([str(copy), "--out", str(tmp_path / "out")]) == 0
    assert "safety_checker: skipped" in capsys.readouterr().out
    written = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert written["safety_checker"] == [None, None]
    assert not (tmp_path / "out" / "safety_checker").exists()


def _fails(argv, capsys, *patterns):
    assert to_flax.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    for pattern in patterns:
        assert pattern in err, err
    return err


def test_errors_name_the_problem_and_the_fix(tmp_path, unet_folder, capsys):
    out = tmp_path / "out"
    _fails([tmp_path / "nowhere", "--out", out], capsys, "nowhere: no such file or folder")
    (tmp_path / "bare").mkdir()
    _fails([tmp_path / "bare", "--out", out], capsys, "no config.json", "component folder")
    _fails(
        [unet_folder, "--out", out, "--config", unet_folder],
        capsys,
        "--config / --model-type are for single-file checkpoints only",
    )
    out.mkdir()
    (out / "keep.txt").write_text("x")
    _fails([unet_folder, "--out", out], capsys, "exists and is not empty", "--overwrite")
    assert to_flax.main([str(unet_folder), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
    inner = tmp_path / "outer" / "unet"
    shutil.copytree(unet_folder, inner)
    for target in (inner, inner.parent):
        _fails([inner, "--out", target, "--overwrite"], capsys, "would delete the input")
    assert (inner / "config.json").exists()
    with pytest.raises(SystemExit):
        to_flax.main([str(unet_folder), "--out", str(out), "--dtype", "fp8"])
