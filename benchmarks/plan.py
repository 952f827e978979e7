"""What fits where, from compiled programs (issue 23): the sampling step and the train steps
(plain, LoRA, Diffusion-DPO) of SD1.5-, SDXL- and the paper's I2V / V2V-size models, compiled
ahead of time (`jax.jit(...).lower(...).compile()`, nothing run, nothing full-size allocated) on
a simulated mesh of CPU devices (`--xla_force_host_platform_device_count`), and per device:

- memory: argument / output / temp / generated-code bytes (`memory_analysis()`); the total is
  argument + output − aliased (the donated state) + temp;
- FLOPs (`cost_analysis()` of the program with attention as plain matmuls, ÷ devices);
- the bytes each collective kind moves (`mv2_jax.parallel.collectives`: ring formulas on the
  partitioned HLO's ops and replica groups) against the minimum the sharding implies
  (`plan_compile.minimum_bytes`);
- which chips it fits (16 GiB v5e, 80 GiB H100, 95 GiB v5p) and the largest batch for each.

Every configuration compiles in its own process (benchmarks/plan_compile.py: its device count
and peak memory its own; what is read from XLA's dumps and how). Programs: see
benchmarks/plan_programs.py. What stands in for the accelerator on the CPU: XLA's own
convolution (not the CPU-tuned forms of `mv2_jax.models.conv`), the memory-minimising scheduler
(not XLA:CPU's default, which gathers every FSDP param up front), and attention as `--attention`
(default "splash": the TPU kernel run in Pallas interpret mode, whose backward recomputes its
scores as TPU splash and cuDNN flash do; "chunked", what "auto" picks on CPU, keeps every
layer's scores for the backward pass).

    python benchmarks/plan.py --quick                       # tiny models, 4 devices (a test)
    nice -n 10 python benchmarks/plan.py --cache runs/plan/cache.jsonl   # the default table
    python benchmarks/plan.py --models sd15 --programs train --search bisect
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

CHIPS = {"v5e": 16, "H100": 80, "v5p": 95}  # GiB of device memory
PROGRAMS = ("sample", "train", "lora", "dpo")  # benchmarks/plan_programs.py builds them
IMAGE_MESH = "data:16,fsdp:4"
VIDEO_MESH = "data:8,fsdp:4,frames:2"
DEFAULT_MODELS = ("sd15", "sdxl", "i2v", "v2v")
GiB = 2**30
FIT_STRIDE = 4  # --search fit: the second compile at 4 × the base batch


def mesh_devices(spec: str, devices: int | None) -> int:
    """The devices of mesh `spec`: `devices` where given (an axis may then be -1), else the
    product of its sizes."""
    from mv2_jax.parallel.mesh import parse_mesh_spec

    sizes = parse_mesh_spec(spec).values()
    if devices is None and -1 in sizes:
        raise SystemExit(f"mesh {spec!r} has a -1 axis: give --devices")
    return devices or math.prod(sizes)


# ---- driver


def run(spec: dict, label: str, cache: Path | None = None, compile_missing: bool = True) -> dict:
    """One compile in its own process (`run_spec_worker`: its memory its own); with `cache`, a
    JSON-lines file of `{"spec", "result"}`, a spec compiled before is read from it and each new
    result is appended as soon as it is known (an interrupted table resumes where it stopped);
    a spec not there with `compile_missing` False gives `{"missing": True}`."""
    from common import run_spec_worker

    key = json.dumps(spec, sort_keys=True)
    if cache is not None and cache.is_file():
        for line in cache.read_text().splitlines():
            entry = json.loads(line)
            if json.dumps(entry["spec"], sort_keys=True) == key:
                print(f"  {label}: from {cache}", file=sys.stderr, flush=True)
                return entry["result"]
    if not compile_missing:
        return {"missing": True}
    result = run_spec_worker(__file__, spec, label)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a") as file:
            file.write(json.dumps({"spec": spec, "result": result}) + "\n")
    return result


def plan_one(model: str, program: str, mesh: str, args) -> dict:
    """The row of one (model, program): the compile at the base batch, then the largest batch
    per chip (`--search`)."""
    devices = mesh_devices(mesh, args.devices)
    unit = batch_unit(mesh, devices)
    base = dict(model=model, program=program, mesh=mesh, devices=devices,
                attention=args.attention, lora_rank=args.lora_rank,
                full_compile=args.full_compile)  # fmt: skip
    label = f"{model} {program} {mesh}"
    units = args.batch or 1
    compile_missing = not args.cached_only
    row = run(dict(base, batch=units * unit), f"{label} batch {units * unit}", args.cache,
              compile_missing)  # fmt: skip
    row.update(model=model, program=program, mesh=mesh, batch=units * unit, unit=unit)
    if row.get("killed") or row.get("missing") or args.search == "none":
        return row

    def total(n: int) -> float:  # memory per device at n batch units (inf: killed)
        spec = dict(base, batch=n * unit, memory_only=True)
        got = run(spec, f"{label} batch {n * unit}", args.cache, compile_missing)
        if got.get("missing"):
            return math.nan
        return math.inf if got.get("killed") else got["total"]

    capacities = {chip: gib * GiB * args.headroom for chip, gib in CHIPS.items()}
    if args.search == "fit":
        far = FIT_STRIDE * units
        per_unit = (total(far) - row["total"]) / (far - units)
        if math.isnan(per_unit):  # --cached-only, the second compile not cached
            return row
        row["per_unit"] = per_unit
        found = {
            chip: largest_units(row["total"], units, per_unit, cap, args.max_units)
            for chip, cap in capacities.items()
        }
    else:
        found = bisect_units(total, units, row["total"], capacities, args.max_units)
    row["largest_batch"] = {
        chip: {"units": n, "batch": n * unit, "verified": args.search == "bisect"}
        for chip, n in found.items()
    }
    return row


def largest_units(total: float, units: int, per_unit: float, capacity: float, cap: int) -> int:
    """The most batch units that fit `capacity` bytes when `units` of them take `total` and each
    one more takes `per_unit` (memory affine in the batch); at most `cap`, 0 if none fits."""
    fixed = total - units * per_unit
    if per_unit <= 0:
        return cap if total <= capacity else 0
    return max(0, min(cap, int((capacity - fixed) // per_unit)))


def bisect_units(total, units: int, at_units: float, capacities: dict, cap: int) -> dict:
    """The most batch units that fit each capacity, from compiles: `total(n)` is the memory at n
    units; doubling from `units` (which takes `at_units`) past the largest capacity, then
    bisecting each capacity's bracket to within 1/8 of its lower end."""
    memory = {units: at_units}
    n = units
    while memory[n] <= max(capacities.values()) and n < cap:
        n = min(2 * n, cap)
        memory[n] = total(n)
    found = {}
    for chip, capacity in capacities.items():
        fits = [m for m, got in memory.items() if got <= capacity]
        lo = max(fits, default=0)
        over = [m for m, got in memory.items() if got > capacity and m > lo]
        hi = min(over, default=None)
        while hi is not None and lo > 0 and hi - lo > max(1, lo // 8):
            mid = (lo + hi) // 2
            memory[mid] = memory[mid] if mid in memory else total(mid)
            lo, hi = (mid, hi) if memory[mid] <= capacity else (lo, mid)
        found[chip] = lo
    return found


def batch_unit(mesh: str, devices: int) -> int:
    """The smallest global batch the mesh splits evenly: the product of the batch axes (`data` ×
    `fsdp`); one sample (video) per batch shard."""
    from mv2_jax.parallel.mesh import parse_mesh_spec

    sizes = parse_mesh_spec(mesh)
    known = math.prod(size for size in sizes.values() if size != -1)
    sizes = {name: devices // known if size == -1 else size for name, size in sizes.items()}
    return sizes.get("data", 1) * sizes.get("fsdp", 1)


def per_device(row: dict, models: dict, mesh: str) -> str:
    from mv2_jax.parallel.mesh import parse_mesh_spec

    model = models[row["model"]]
    samples = row["batch"] // row["unit"]
    if model.frames is None:
        return f"{samples} img"
    frames = model.frames // parse_mesh_spec(mesh).get("frames", 1)
    return f"{samples} × {frames} f"


def gb(x: float) -> str:
    return f"{x / GiB:.3g}" if x >= 0.001 * GiB else f"{x / GiB:.1e}"


def report(rows: list[dict], args) -> None:
    from common import machine, table
    from plan_programs import models as all_models

    models = all_models()
    print("\n## What fits where (issue 23): compiled programs, per device (GiB = 2³⁰ bytes)")
    print(f"machine: {machine()}; attention {args.attention}; headroom {args.headroom}")
    memory_rows, comm_rows, fit_rows = [], [], []
    for row in rows:
        name = [row["model"], row["program"], row["mesh"], row["batch"]]
        if row.get("killed") or row.get("missing"):
            why = "compile killed (out of memory)" if row.get("killed") else "not compiled"
            memory_rows.append([*name, why] + [""] * 7)
            continue
        memory_rows.append([
            *name, per_device(row, models, row["mesh"]), gb(row["argument"]),
            gb(row["output"]), gb(row["temp"]), f"{row['code'] / 2**20:.1f}", gb(row["total"]),
            f"{row['model_flops'] / 1e12:.3g}", f"{row['compile_s']:.0f}",
        ])  # fmt: skip
        kinds = row["collectives"]
        minimum = row["minimum"]
        measured = _measured(row)
        total = sum(k["bytes"] for k in kinds.values())
        least = sum(minimum.values())
        comm_rows.append([
            *name[:2], gb(kinds["all-gather"]["bytes"]), gb(kinds["reduce-scatter"]["bytes"]),
            gb(kinds["all-reduce"]["bytes"]), gb(kinds["all-to-all"]["bytes"]),
            gb(kinds["collective-permute"]["bytes"]),
            *(f"{gb(minimum[k])} ({_ratio(measured[k], minimum[k])})" for k in minimum),
            f"{gb(total)} / {gb(least)} = {_ratio(total, least)}",
        ])  # fmt: skip
        fits = [
            "yes" if row["total"] <= gib * GiB * args.headroom else "no" for gib in CHIPS.values()
        ]
        largest = [_largest(row, chip, models) for chip in CHIPS]
        per_unit = gb(row["per_unit"]) if "per_unit" in row else ""
        fit_rows.append([*name[:2], gb(row["total"]), *fits, *largest, per_unit])
    headers = [
        "model", "program", "mesh", "batch", "per device", "args", "output", "temp",
        "code MiB", "total", "model TFLOP/dev", "compile s",
    ]  # fmt: skip
    print(table(headers, memory_rows))
    print("\ncollectives: GiB one device sends per step (ring formulas), and the minimum the "
          "sharding implies (measured / minimum)")  # fmt: skip
    headers = [
        "model", "program", "all-gather", "reduce-scatter", "all-reduce", "all-to-all",
        "permute", "min gather (AG)", "min grads (RS+AR)", "min frames (A2A)", "total / min",
    ]  # fmt: skip
    print(table(headers, comm_rows))
    print("\nfits (total ≤ chip × headroom) and the largest global batch (videos: × all frames)")
    headers = ["model", "program", "total at batch"]
    headers += [f"fits {c} {g}" for c, g in CHIPS.items()]
    headers += [f"largest {c}" for c in CHIPS] + ["GiB per batch unit"]
    print(table(headers, fit_rows))
    excess = [
        f"{row['model']} {row['program']}: {kind} {_ratio(m, row['minimum'][kind])}"
        for row in rows
        if not row.get("killed") and not row.get("missing")
        for kind, m in _measured(row).items()
        if m > 1.5 * row["minimum"][kind] + 16 * 2**20
    ]
    print("\ncollectives over 1.5 × their minimum (+16 MiB of scalars and norm statistics): "
          + ("; ".join(excess) if excess else "none"))  # fmt: skip


def _measured(row: dict) -> dict:
    kinds = row["collectives"]
    return {
        "gather": kinds["all-gather"]["bytes"],
        "grads": kinds["reduce-scatter"]["bytes"] + kinds["all-reduce"]["bytes"],
        "frames": kinds["all-to-all"]["bytes"] + kinds["collective-permute"]["bytes"],
    }


def _ratio(measured: float, minimum: float) -> str:
    if minimum <= 0:
        return "—" if measured <= 0 else "∞"
    return f"{measured / minimum:.2f}×"


def _largest(row: dict, chip: str, models: dict) -> str:
    found = row.get("largest_batch", {}).get(chip)
    if found is None:
        return ""
    model = models[row["model"]]
    batch = found["batch"]
    if found["units"] == 0:
        return "—"
    text = f"{batch}" if model.frames is None else f"{batch} × {model.frames} f"
    return text + ("" if found["verified"] else " (fit)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", help=f"default {' '.join(DEFAULT_MODELS)}")
    parser.add_argument(
        "--programs", nargs="+", default=list(PROGRAMS), choices=PROGRAMS,
        help="default all four",
    )  # fmt: skip
    parser.add_argument(
        "--devices", type=int,
        help="simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set in "
        "each worker before jax is imported); default: the mesh's size",
    )  # fmt: skip
    parser.add_argument("--image-mesh", help=f"mesh of image models (default {IMAGE_MESH})")
    parser.add_argument("--video-mesh", help=f"mesh of video models (default {VIDEO_MESH})")
    parser.add_argument(
        "--batch", type=int, help="samples per batch shard (data × fsdp) of the table row (1)"
    )
    parser.add_argument(
        "--search", default="fit", choices=["none", "fit", "bisect"],
        help="largest batch per chip: none; fit (a second compile at 4 × the batch, memory "
        "affine in the batch: an estimate, optimistic where the peak does not grow with the "
        "batch at first); bisect (compiles: doubling the batch, then bisecting each chip's "
        "bracket to 1/8)",
    )  # fmt: skip
    parser.add_argument(
        "--max-units", type=int, default=256, help="largest batch searched, per batch shard"
    )
    parser.add_argument(
        "--headroom", type=float, default=1.0, help="usable fraction of each chip's memory"
    )
    parser.add_argument(
        "--attention",
        default="splash",
        choices=["splash", "auto:tpu", "chunked", "xla"],
        help="attention on CPU (splash: the TPU kernel in Pallas interpret mode, every layer; "
        "auto:tpu: what 'auto' picks on a TPU, splash for long sequences only)",
    )
    parser.add_argument("--lora-rank", type=int, default=32, help="the lora program's rank")
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny models on 4 devices (image data:2,fsdp:2; video fsdp:2,frames:2): a test",
    )  # fmt: skip
    parser.add_argument(
        "--full-compile", action="store_true",
        help="finish each compile (code generation too) and check the numbers read from XLA's "
        "dumps against the executable's memory_analysis() and cost_analysis()",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path,
        help="JSON-lines file of compiled results: read before compiling, appended after each "
        "compile (e.g. runs/plan/cache.jsonl: a rerun resumes an interrupted table)",
    )  # fmt: skip
    parser.add_argument(
        "--cached-only", action="store_true",
        help="compile nothing: report what --cache holds (the rest: 'not compiled')",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # one configuration, in its own process
        from plan_compile import set_xla_flags, worker

        spec = json.loads(args.worker)
        with tempfile.TemporaryDirectory() as dump_dir:
            set_xla_flags(spec["devices"], dump_dir)  # before jax is imported
            worker(spec, dump_dir)
        return
    from plan_programs import models as all_models

    if args.quick:
        args.models = args.models or ["tiny", "tiny_video", "tiny_v2v"]
    args.image_mesh = args.image_mesh or ("data:2,fsdp:2" if args.quick else IMAGE_MESH)
    args.video_mesh = args.video_mesh or ("fsdp:2,frames:2" if args.quick else VIDEO_MESH)
    models = all_models()
    rows = []
    started = time.perf_counter()
    for name in args.models or DEFAULT_MODELS:
        mesh = args.image_mesh if models[name].frames is None else args.video_mesh
        for program in args.programs:
            if program == "dpo" and models[name].stage == "v2v":
                continue  # Diffusion-DPO tunes the T2I and I2V stages (training/dpo.py)
            rows.append(plan_one(name, program, mesh, args))
    print(f"all runs: {json.dumps(rows)}")
    report(rows, args)
    print(f"\n{len(rows)} configurations in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
