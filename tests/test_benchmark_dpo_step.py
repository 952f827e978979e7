"""benchmarks/dpo_step.py --smoke end to end (so that the script cannot rot): the DPO step of
both frameworks, full and LoRA, on the tiny UNet, each run in its own process; the DPO loss at
step 0 is log 2 on both sides (the reference is the policy there), both adapt the same kernels,
and LoRA's state is smaller than full fine-tuning's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["jax:full:dpo", "torch:full:dpo", "jax:lora:dpo", "torch:lora:dpo"]


@pytest.mark.slow
@pytest.mark.torch
def test_dpo_step_benchmark_smoke(tmp_path):
    for package in ("torch", "diffusers", "peft"):
        pytest.importorskip(package)
    command = [sys.executable, "benchmarks/dpo_step.py", "--smoke", "--steps", "1", "--runs"]
    env = dict(os.environ, MV2_BENCH_CACHE=str(tmp_path))  # the tiny UNet is saved there
    done = subprocess.run(command + RUNS, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("all runs: "))
    runs = json.loads(line.removeprefix("all runs: "))
    assert sorted(runs) == sorted(run.replace(":", " ") for run in RUNS)
    for name, run in runs.items():
        # policy = reference at step 0; fp32 rounding of the two forwards (compiled apart)
        # is scaled by β/2 = 2500 in the logit, so log 2 to ~1e-4, not to 1e-7
        assert run["loss"] == pytest.approx(math.log(2), abs=1e-3), name
        assert len(run["seconds"]) == 1 and run["peak_rss_gb"] > 0, name
    for trains in ("full", "lora"):
        jax_run, torch_run = runs[f"jax {trains} dpo"], runs[f"torch {trains} dpo"]
        assert jax_run["trained_params"] == torch_run["trained_params"]
        assert jax_run["adapted_modules"] == torch_run["adapted_modules"]
    assert runs["jax lora dpo"]["adapted_modules"] > 0
    assert runs["jax lora dpo"]["trained_params"] < runs["jax full dpo"]["trained_params"] / 10
    assert runs["jax lora dpo"]["argument_gb"] < runs["jax full dpo"]["argument_gb"]
    table = [
        x for x in done.stdout.splitlines() if x.startswith("| full") or x.startswith("| lora")
    ]
    assert len(table) == len(RUNS)
