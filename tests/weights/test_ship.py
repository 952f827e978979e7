"""Shipping pipeline folders: float16 weights, components shared by several pipelines stored
once (the others link to it), and the result loads like the source."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import mv2_jax
from configs.t2i import tiny_model
from mv2_jax.training.random_pipeline import write_random_pipeline
from mv2_jax.weights.load import load_component
from mv2_jax.weights.ship import main, ship_pipelines


@pytest.fixture(scope="module")
def two_pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    first = write_random_pipeline(tiny_model(), root / "first", seed=0)
    second = root / "second"
    shutil.copytree(first, second)  # the same components, but for its scheduler
    config = json.loads((second / "scheduler" / "scheduler_config.json").read_text())
    config["prediction_type"] = "v_prediction"
    (second / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return first, second


def test_shared_components_are_written_once_in_float16(two_pipelines, tmp_path):
    first, second = two_pipelines
    out = ship_pipelines({"a": first, "b": second}, tmp_path / "shipped")
    b = out["b"]
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert (b / name).is_symlink() and os.readlink(b / name) == f"../a/{name}"
    assert not (b / "scheduler").is_symlink()  # it differs
    assert (
        json.loads((b / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
        == "v_prediction"
    )

    _, source = load_component(first / "unet")
    _, shipped = load_component(b / "unet")  # float32 again, from float16
    jax.tree.map(
        lambda s, x: np.testing.assert_array_equal(x, np.asarray(s, np.float16).astype(np.float32)),
        source,
        shipped,
    )
    pipe = mv2_jax.load_pipeline(b)
    assert pipe.scheduler_config["prediction_type"] == "v_prediction"


def test_cli_refuses_an_existing_folder_and_a_non_pipeline(two_pipelines, tmp_path, capsys):
    first, _ = two_pipelines
    (tmp_path / "taken").mkdir()
    assert main([f"a={first}", "--out", str(tmp_path / "taken")]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([f"a={tmp_path}", "--out", str(tmp_path / "new")])
    assert "NAME=FOLDER with a pipeline folder" in capsys.readouterr().err
