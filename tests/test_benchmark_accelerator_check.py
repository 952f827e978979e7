"""benchmarks/accelerator_check.sh without an accelerator: its CPU dry run goes through every
section (the install it would make, the parity selection collected, the three UNet timings with
tiny configs, the table), a section stopped at its time cap is reported while the rest still
prints, the table reads partial results, and both scripts pass `bash -n` and shellcheck."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from accelerator_step import BASELINE, JAX_ROW, ROOT, report

CHECK = ROOT / "benchmarks" / "accelerator_check.sh"
WHEELS = ROOT / "benchmarks" / "accelerator_wheels.sh"
IMPLEMENTATIONS = (
    JAX_ROW,
    "diffusers bf16 eager",
    "diffusers fp16 eager",
    "diffusers bf16 torch.compile (eager)",
)


def dry_run(out: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(CHECK), "--dry-run"], env=env, capture_output=True, text=True, timeout=1500
    )


@pytest.mark.parametrize("script", [CHECK, WHEELS], ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "1":  # .ci/run installs it
            pytest.fail("shellcheck is not installed")
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.slow
def test_dry_run_goes_through_every_section_and_prints_the_table(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    proc = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "would run" in out and "pip install --no-index --find-links .whl" in out
    assert "tests collected" in out
    table = (tmp_path / "table.md").read_text()
    assert table in out and (tmp_path / "check.log").read_text() == out
    assert "on CPU (dry run" in table
    rows = [line for line in table.splitlines() if line.startswith("| tiny")]
    for title in ("SD-style UNet", "SDXL-style UNet", "motion UNet"):
        assert [r.split(" | ")[1] for r in rows if title in r] == list(IMPLEMENTATIONS), rows
    for section in ("info", "tests", "sd15", "sdxl", "motion"):
        assert f"\n{section}: ok, " in out
    for model in ("sd15", "sdxl", "motion"):
        result = json.loads((tmp_path / f"{model}.json").read_text())
        assert not result["errors"] and "running" not in result
        # The same weights through load_component's key mapping: both compute one function
        # (bf16 rounding apart); a wrong hand-over would differ by O(1).
        assert result["rows"][JAX_ROW]["diff_vs_baseline"] < 0.1, result["rows"]


@pytest.mark.slow
def test_a_section_stopped_at_its_cap_is_reported_and_the_rest_still_runs(tmp_path):
    pytest.importorskip("torch")
    proc = dry_run(tmp_path, MV2_CHECK_TESTS="", MV2_CHECK_MODELS="sd15", MV2_CHECK_SD15_S="1")
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "\nsd15: stopped at its 1 s cap" in proc.stdout
    table = (tmp_path / "table.md").read_text()  # stopped before or while measuring
    assert "sd15: no result" in table or "stopped during «mv2_jax bf16 jit»" in table, table
    assert "\ninfo: ok, " in proc.stdout


def test_table_of_partial_results(tmp_path):
    versions = {"jax": "0.11.2", "torch": "2.11.0"}
    full = dict(
        model="sd15",
        title="SD1.5 UNet, 512²",
        card="NVIDIA H100 80GB HBM3",
        versions=versions,
        rows={
            JAX_ROW: dict(compile_s=30.0, first_s=0.5, seconds=[0.05, 0.04, 0.06]),
            BASELINE: dict(first_s=1.0, seconds=[0.1, 0.1]),
            "diffusers bf16 torch.compile (inductor)": dict(first_s=60.08, seconds=[0.08]),
        },
        errors={"diffusers fp16 eager": "RuntimeError: out of memory"},
    )
    stopped = dict(
        full, model="sdxl", title="SDXL UNet, 1024²", running="mv2_jax bf16 jit", rows={}, errors={}
    )
    paths = []
    for result in (full, stopped):
        paths.append(tmp_path / f"{result['model']}.json")
        paths[-1].write_text(json.dumps(result))
    text = report([str(p) for p in [*paths, tmp_path / "motion.json"]])
    assert "on NVIDIA H100 80GB HBM3" in text and "jax 0.11.2, torch 2.11.0" in text
    assert f"| SD1.5 UNet, 512² | {JAX_ROW} | 30.0 | 0.50 | 50.0 | 0.50 |  |" in text
    assert f"| SD1.5 UNet, 512² | {BASELINE} | — | 1.00 | 100.0 | 1.00 |  |" in text
    assert "| diffusers bf16 torch.compile (inductor) | 60.0 | 60.08 | 80.0 | 0.80 |" in text
    assert "- SD1.5 UNet, 512², diffusers fp16 eager: RuntimeError: out of memory" in text
    assert "- SDXL UNet, 1024²: stopped during «mv2_jax bf16 jit»" in text
    assert "- motion: no result" in text
