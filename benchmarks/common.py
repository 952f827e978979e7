"""Shared benchmark tools: interleaved timing, a per-op breakdown from a jax profile, the
machine description, and markdown tables. Benchmarks print; docs/benchmarks.md records."""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import jax

CACHE = Path(os.environ.get("MV2_BENCH_CACHE", Path.home() / ".cache" / "mv2_jax_bench"))


def run_worker(script: str, kind: str, flags: dict[str, object]) -> dict:
    """Run `python script --worker kind --flag value ...` in its own process (so that its peak
    memory is its own) and return the JSON dict it prints last, or `{"error": ...}`."""
    cmd = [sys.executable, script, "--worker", kind]
    for flag, value in flags.items():
        cmd += [f"--{flag.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr: progress
    if proc.returncode != 0:
        return {"error": f"worker exited with {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_spec_worker(script: str, spec: dict, label: str) -> dict:
    """Run `python script --worker JSON(spec)` in its own process (its peak memory its own) and
    return the JSON dict it prints last. A worker the kernel's OOM killer ends (SIGKILL) gives
    `{"killed": True}` and what its last JSON line had said by then; any other failure raises
    with the worker's stderr. `label` names the run in the progress lines."""
    cmd = [sys.executable, script, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == -9:  # the configuration does not fit
        print(f"  {label}: killed (out of memory)", file=sys.stderr, flush=True)
        return {**(json.loads(lines[-1]) if lines else {}), "killed": True}
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"worker {spec} failed (exit {proc.returncode})")
    result = json.loads(lines[-1])
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    print(f"  {label}: {shown}", file=sys.stderr, flush=True)
    return result


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run each function once per round, round after round, so that load on the machine
    falls on all of them alike; returns every round's seconds per name."""
    results: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            results[name].append(timed(fn))
    return results


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (VmHWM). Not `getrusage`'s maxrss: a child
    started with vfork + exec inherits its parent's, so a worker would report at least its
    parent's peak."""
    return _status_gb("VmHWM:")


def rss_gb() -> float:
    """Resident memory of this process now."""
    return _status_gb("VmRSS:")


def _status_gb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 2**20  # KiB
    return float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; jax {jax.__version__}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (?:\([^=]*?\)|\S+) ([\w\-]+)\((.*)")
CATEGORIES = ("attention", "convolution", "normalisation", "linear", "rest")


def _category(op_name: str) -> str:
    if "dot_product_attention" in op_name:
        return "attention"
    if "/convolution/" in op_name or op_name.endswith("conv_general_dilated"):
        return "convolution"
    path = op_name.split("/")
    if any("norm" in part for part in path[:-1]):
        return "normalisation"
    if op_name.endswith("dot_general"):
        return "linear"
    return "rest"


def op_breakdown(jitted: Callable, *args) -> dict[str, float]:
    """Seconds per op category for one call of `jitted(*args)`, from a jax profiler trace:
    each executed HLO op is attributed through its `op_name` metadata (module path and
    primitive) to attention, convolution, normalisation, linear, or the rest."""
    compiled = jitted.lower(*args).compile()
    op_names, control_flow = {}, set()
    for line in compiled.as_text().splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        name, opcode, rest = match.groups()
        if opcode in ("while", "conditional", "call"):
            control_flow.add(name)  # its body's ops are traced (and counted) one by one
        meta = re.search(r'op_name="([^"]*)"', rest)
        op_names[name] = meta.group(1) if meta else ""
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(compiled(*args))
        trace_file = next(Path(trace_dir).rglob("perfetto_trace.json.gz"))
        with gzip.open(trace_file) as f:
            events = json.load(f)["traceEvents"]
    seconds: dict[str, float] = defaultdict(float)
    for event in events:
        hlo_op = event.get("args", {}).get("hlo_op")
        if event.get("ph") == "X" and hlo_op and hlo_op not in control_flow:
            seconds[_category(op_names.get(hlo_op, ""))] += event["dur"] / 1e6
    return {c: seconds.get(c, 0.0) for c in CATEGORIES}
