"""`train.py` as users run it, in subprocesses: --help, config errors, a run killed with
SIGKILL and started again ending bit-identical to an uninterrupted one, and 2 processes × 4
devices (gloo collectives on 127.0.0.1) ending where 1 process × 8 devices does, from a written
pipeline and from a random init that process 0 writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mv2_jax.training import restore_params

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The test process's XLA flags with `devices` CPU devices, and a compilation cache shared
    by the runs of this module (each compiles the same step)."""
    cache = tmp_path_factory.mktemp("jax_cache")

    def make(devices: int = 8) -> dict:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={devices}")
        return dict(
            os.environ,
            XLA_FLAGS=" ".join(flags),
            JAX_PLATFORMS="cpu",
            JAX_COMPILATION_CACHE_DIR=str(cache),
            PYTHONPATH=str(ROOT),
        )

    return make


def command(workdir, pipeline, data, *extra) -> list[str]:
    """train.py on configs/t2i.py:tiny from `pipeline` (None: the config's random init)."""
    start = [f"--config.model.pipeline={pipeline}"] if pipeline else []
    return [
        sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/t2i.py:tiny"),
        "--workdir", str(workdir), *start, f"--config.data.image_dir={data}",
        "--config.log_every=2", *extra,
    ]  # fmt: skip


def max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_help_lists_the_flags(env):
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"],
        capture_output=True, text=True, env=env(), check=True,
    ).stdout  # fmt: skip
    for flag in ("--config", "--workdir", "--coordinator_address", "--[no]profile", "--precompute"):
        assert flag in out


def test_unknown_config_key_is_an_error(env, tmp_path, init_pipeline, image_data):
    run = subprocess.run(
        command(tmp_path, init_pipeline, image_data, "--config.learning_rate=0.1"),
        capture_output=True, text=True, env=env(),
    )  # fmt: skip
    assert run.returncode != 0
    assert "learning_rate" in run.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_sigkill_then_resume_is_bit_identical(env, tmp_path, init_pipeline, image_data):
    args = ("--config.total_steps=12", "--config.checkpoint_every=4")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole, init_pipeline, image_data, *args), env=env(2), check=True,
                   capture_output=True)  # fmt: skip

    process = subprocess.Popen(
        command(killed, init_pipeline, image_data, *args), env=env(2),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "4").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint 4"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-run: steps 5… are under way
    process.wait()
    assert not (killed / "checkpoints" / "12").exists()
    subprocess.run(command(killed, init_pipeline, image_data, *args), env=env(2), check=True,
                   capture_output=True)  # fmt: skip

    for ema in (False, True):
        a, b = restore_params(whole, ema=ema), restore_params(killed, ema=ema)
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # The restarted run's log reads as one run: each step once, with the same numbers.
    rows = [
        [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
        for w in (whole, killed)
    ]
    assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]] == list(range(2, 13, 2))
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in rows[1]] == [r[key] for r in rows[0]], key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_STEPS = ("--config.total_steps=2", "--config.checkpoint_every=2", "--config.mesh=data:-1")


@pytest.fixture(scope="module")
def one_process_run(env, tmp_path_factory, init_pipeline, image_data) -> Path:
    """The reference: 1 process × 8 devices, two steps from the written pipeline."""
    one = tmp_path_factory.mktemp("one_process") / "run"
    subprocess.run(command(one, init_pipeline, image_data, *TWO_STEPS), env=env(8), check=True,
                   capture_output=True)  # fmt: skip
    return one


@pytest.mark.parametrize("start", ["pipeline", "random init"])
def test_two_processes_equal_one(env, tmp_path, init_pipeline, image_data, one_process_run, start):
    """`random init`: no config.model.pipeline, so process 0 writes WORKDIR/init_pipeline (the
    config's init at seed 0: the fixture's params) while process 1 waits for it; no collective
    save may be made by one process alone (issue 18: a sync_global_devices name mismatch)."""
    one, two = one_process_run, tmp_path / "two"
    pipeline = init_pipeline if start == "pipeline" else None
    port = _free_port()
    distributed = (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2")
    processes = [
        subprocess.Popen(
            command(
                two,
                pipeline,
                image_data,
                *TWO_STEPS,
                *distributed,
                f"--process_id={i}",
                "--cpu_collectives=gloo",
            ),
            env=env(4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in processes]
    for p in processes:  # both logs: one process may fail because of the other
        assert p.returncode == 0, "\n".join(
            f"process {i}: …{e[-2500:]}" for i, e in enumerate(errors)
        )
    if pipeline is None:
        assert (two / "init_pipeline" / "model_index.json").is_file()
        assert not (two / "init_pipeline.partial").exists()
    assert max_diff(restore_params(one), restore_params(two)) <= 1e-5
    assert max_diff(restore_params(one, ema=True), restore_params(two, ema=True)) <= 1e-5
