"""Training metrics, written by process 0 only: one JSON object per logged step in
`WORKDIR/metrics.jsonl` (appended, so a resumed run continues the file) and TensorBoard event
files under `WORKDIR/tensorboard/` via tensorboardX (no TensorFlow needed).

Throughput: samples/s over the interval since the last log; TFLOP/s from the XLA cost analysis
of the step (the FLOPs XLA counts for the whole program, divided by the devices); MFU against
`config.peak_tflops_per_device` when it is set.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax


def step_flops(lowered) -> float | None:
    """FLOPs of one call of a lowered jit function (XLA's cost analysis of the program before
    compilation, so it costs no second compile), or None if XLA won't say."""
    try:
        analysis = lowered.cost_analysis()
    except Exception:  # some backends raise instead of returning nothing
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class MetricsWriter:
    def __init__(
        self, workdir: str | Path, *, enabled: bool, peak_tflops: float = 0.0, start_step: int = 0
    ):
        """`start_step`: the step the run (re)starts from; rows a killed run logged after its
        last checkpoint are dropped, in the JSONL file and in TensorBoard (`purge_step`), so
        the logs read as one run."""
        self.enabled = enabled
        self.peak_tflops = peak_tflops
        self.flops_per_step: float | None = None  # the whole step, all devices
        self._last = None
        self._tb = None
        if enabled:
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "metrics.jsonl"
            if path.exists():
                kept = [r for r in path.read_text().splitlines() if _step(r) <= start_step]
                path.write_text("".join(r + "\n" for r in kept))
            self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115
            from tensorboardX import SummaryWriter

            purge = start_step + 1 if start_step else None
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=purge)

    def start_interval(self, step: int) -> None:
        """Mark the (step, time) the next throughput figures are measured from."""
        self._last = (step, time.perf_counter())

    def write(self, step: int, metrics: dict[str, Any], batch_size: int, **extra) -> dict:
        """Log the device `metrics` (fetched here) and host `extra` values at `step`."""
        row = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        if self._last is not None and step > self._last[0]:
            seconds = (now - self._last[1]) / (step - self._last[0])
            row["seconds_per_step"] = seconds
            row["samples_per_second"] = batch_size / seconds
            if self.flops_per_step:
                tflops = self.flops_per_step / jax.device_count() / seconds / 1e12
                row["tflops_per_device"] = tflops
                if self.peak_tflops > 0:
                    row["mfu"] = tflops / self.peak_tflops
        self._last = (step, now)
        row.update(extra)
        row["step"] = step
        if self.enabled:
            self._jsonl.write(json.dumps(row) + "\n")
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        return row

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _step(row: str) -> int:
    try:
        return int(json.loads(row)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return 1 << 62
