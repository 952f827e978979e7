"""The frame-interpolation stage through `train()` on configs/vfi.py:tiny: the loss falls on
its repeated batch, checkpoints and metrics are written, a run resumed from a checkpoint ends
exactly where the uninterrupted one did, and the export loads."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

pytest.importorskip("skimage")

from configs.vfi import get_config
from mv2_jax.training import restore_params
from mv2_jax.training.export import export_pipeline
from mv2_jax.training.trainer import train

STEPS = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vfi_run")
    config = get_config("tiny")
    config.total_steps, config.checkpoint_every = STEPS, STEPS // 2
    state = train(config, workdir)
    return workdir, config, state


def test_loss_falls_on_the_repeated_batch(run):
    """configs/vfi.py:tiny cycles through one batch of clips: the generator fits it."""
    workdir, _, _ = run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert last["g_loss"] < 0.9 * first["g_loss"], (first, last)
    assert last["flow"] < 0.85 * first["flow"], (first, last)


def test_metrics_and_checkpoints(run):
    workdir, _, _ = run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))
    for key in ("l1", "census", "flow", "adv", "d_loss", "psnr", "loss"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12]
    params = restore_params(workdir)
    assert set(params) == {"generator", "discriminator"}


def test_resumed_run_ends_where_the_uninterrupted_one_did(run, tmp_path):
    """Kill after the step-6 checkpoint (here: drop step 12), resume: the same data, keys and
    updates follow, so the final params are identical."""
    workdir, config, state = run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))
    again = train(config, resumed)
    assert int(again.step) == STEPS
    jax.tree.map(np.testing.assert_array_equal, again.params, state.params)


def test_export_is_a_component_folder(run, tmp_path):
    import mv2_jax

    workdir, _, _ = run
    folder = export_pipeline(workdir, tmp_path / "vfi")  # what `python -m …export` runs
    model, params = mv2_jax.load_component(folder)
    ema = restore_params(workdir, ema=True)["generator"]
    assert model.block_scales == (1,)
    jax.tree.map(np.testing.assert_array_equal, params, ema)
