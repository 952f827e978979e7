"""benchmarks/plan.py (what fits where, from compiled programs): the collectives read from a
known HLO text, the largest-batch arithmetic, and the script end to end on the tiny T2I model's
FSDP train step on 4 simulated devices in a subprocess — its memory, FLOPs and collectives are
there, and the collectives move at least what FSDP implies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mv2_jax.parallel.collectives import bytes_by_kind, collectives, group_size, shape_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

HLO = """HloModule jit_step, entry_computation_layout={(f32[2]{0})->f32[8]{0}}, num_partitions=4

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %all-reduce.7 = f32[8]{0} all-reduce(%x), channel_id=3, replica_groups={{0,1},{2,3}}, use_global_device_ids=true, to_apply=%add
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %all-reduce.7)
}

%cond (q: (s32[], f32[8])) -> pred[] {
  %q = (s32[], f32[8]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %five = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %five), direction=LT
}

ENTRY %main.9 (x: f32[2]) -> f32[8] {
  %x = f32[2]{0} parameter(0)
  %all-gather.1 = f32[8]{0} all-gather(%x), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}, use_global_device_ids=true, metadata={op_name="jit(step)/params/gather"}
  %y = bf16[8]{0} convert(%all-gather.1)
  %reduce-scatter.2 = bf16[2]{0} reduce-scatter(%y), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0','axis_1'}, dimensions={0}, to_apply=%add
  %all-to-all.3 = (f32[4]{0}, f32[4]{0}) all-to-all(%x, %x), channel_id=4, replica_groups={{0,1},{2,3}}
  %collective-permute.4 = f32[8]{0} collective-permute(%all-gather.1), channel_id=5, source_target_pairs={{0,1},{1,0}}
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]{0}) tuple(%zero, %collective-permute.4)
  %while.5 = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %out = f32[8]{0} get-tuple-element(%while.5), index=1
  %all-reduce.6 = f32[8]{0} all-reduce(%out), channel_id=6, replica_groups=[1,4]<=[4], to_apply=%add
  %offset = s32[] constant(2)
  ROOT %dynamic-slice.7 = f32[2]{0} dynamic-slice(%all-reduce.6, %offset), dynamic_slice_sizes={2}
}
"""  # noqa: E501 (HLO as XLA prints it)


def test_collectives_of_a_known_hlo():
    ops = {op.name: op for op in collectives(HLO)}
    assert sorted(op.kind for op in ops.values()) == sorted(
        ["all-gather", "reduce-scatter", "all-reduce", "all-reduce", "all-to-all",
         "collective-permute"]
    )  # fmt: skip
    gather = ops["all-gather.1"]
    assert (gather.result_bytes, gather.group_size, gather.bytes_moved) == (32, 4, 24)
    assert gather.source == "jit(step)/params/gather" and not gather.in_loop
    scatter = ops["reduce-scatter.2"]  # a bf16 shard of 2 of 8 elements, both mesh axes
    assert (scatter.result_bytes, scatter.group_size, scatter.bytes_moved) == (4, 4, 12)
    swap = ops["all-to-all.3"]  # two operands of 16 bytes, groups of 2: half of each stays
    assert (swap.result_bytes, swap.group_size, swap.bytes_moved) == (32, 2, 16)
    assert ops["collective-permute.4"].bytes_moved == 32
    loop = ops["all-reduce.7"]  # 2·S·(n−1)/n, five times (the loop's known trip count)
    assert (loop.bytes_moved, loop.executions, loop.in_loop, loop.sliced) == (32, 5, True, False)
    sliced = ops["all-reduce.6"]  # only sliced afterwards: a reduce-scatter's S·(n−1)/n
    assert (sliced.sliced, sliced.effective_kind, sliced.bytes_moved) == (
        True, "reduce-scatter", 24
    )  # fmt: skip
    totals = bytes_by_kind(list(ops.values()))
    assert totals["all-reduce"] == {"ops": 1, "bytes": 160, "in_loop": 1}
    assert totals["reduce-scatter"] == {"ops": 2, "bytes": 36, "in_loop": 0, "from_all_reduce": 1}
    assert totals["all-gather"]["bytes"] == 24


def test_shapes_and_groups():
    assert shape_bytes("(f32[4,64]{1,0}, bf16[3]{0}, /*index=2*/s8[5])") == 4 * 256 + 6 + 5
    assert shape_bytes("f32[]") == 4 and shape_bytes("token[]") == 0
    assert group_size("replica_groups={{0,2,4},{1,3,5}}, dimensions={0}", 6) == 3
    assert group_size("replica_groups=[16,4]<=[64], dimensions={1}", 64) == 4
    mesh = (
        "replica_groups=mesh['axis_0'=8,'axis_1'=4,'axis_2'=2], "
        "device_ids=([8,4,2]T(1,0,2)) {'axis_1','axis_2'}"
    )
    assert group_size(mesh, 64) == 8
    assert group_size("replica_groups={}, to_apply=%add", 64) == 64


def test_largest_units():
    from plan import largest_units

    # 10 GiB at 2 units, 3 GiB per unit: 4 GiB fixed, so 16 GiB holds 4 units
    gib = 2**30
    assert largest_units(10 * gib, 2, 3 * gib, 16 * gib, 4096) == 4
    assert largest_units(20 * gib, 1, 3 * gib, 16 * gib, 4096) == 0  # not even one
    assert largest_units(gib, 1, 0.001 * gib, 80 * gib, 100) == 100  # capped


def test_bisect_units_finds_the_largest_batch_past_a_flat_start():
    from plan import bisect_units

    # the peak is batch-independent up to 5 units (10 GiB), then 2 GiB a unit: a fit from the
    # first two batches would find no growth at all
    gib, compiled = 2**30, []

    def total(n):
        compiled.append(n)
        return max(10, 2 * n) * gib

    caps = {"v5e": 16 * gib, "H100": 80 * gib, "v5p": 95 * gib}
    found = bisect_units(total, 1, 10 * gib, caps, 4096)
    assert found["v5e"] == 8 and found["H100"] == 40 and 44 <= found["v5p"] <= 47
    assert len(compiled) == len(set(compiled)) <= 14  # no batch compiled twice
    assert bisect_units(total, 1, 10 * gib, {"small": 5 * gib}, 4096) == {"small": 0}


@pytest.mark.slow
def test_plan_quick_fsdp_train_step(tmp_path):
    command = [
        sys.executable, "benchmarks/plan.py", "--quick", "--models", "tiny", "--programs",
        "train", "--image-mesh", "fsdp:4", "--search", "none", "--full-compile",
    ]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("all runs: "))
    (row,) = json.loads(line.removeprefix("all runs: "))
    assert (row["model"], row["program"], row["mesh"], row["batch"]) == (
        "tiny",
        "train",
        "fsdp:4",
        4,
    )
    for key in ("argument", "output", "temp", "total", "model_flops", "compiled_flops"):
        assert row[key] > 0, key
    assert row["alias"] > 0.9 * row["output"]  # the state is donated: updated in place
    assert row["total"] == row["argument"] + row["output"] - row["alias"] + row["temp"]
    assert row["dump_matches"]  # read from XLA's dumps = the executable's own analyses
    assert row["collectives_from"] == "partitioned"
    kinds, minimum = row["collectives"], row["minimum"]
    assert kinds["all-gather"]["ops"] > 0 and kinds["all-gather"]["bytes"] > 0
    assert minimum["gather"] > 0 and minimum["grads"] > 0 and minimum["frames"] == 0
    # FSDP: params gathered (no remat in the tiny config: once) and gradients reduce-scattered
    moved = sum(kind["bytes"] for kind in kinds.values())
    assert moved >= minimum["gather"] + minimum["grads"]
    assert moved < 3 * (minimum["gather"] + minimum["grads"])
    assert any(x.startswith("| tiny | train | fsdp:4 | 4 |") for x in done.stdout.splitlines())


def test_cache_reads_back_what_a_compile_wrote(tmp_path, monkeypatch):
    import common
    from plan import run

    compiled = []

    def worker(script, spec, label):
        compiled.append(spec)
        return {"total": 100 * spec["batch"]}

    monkeypatch.setattr(common, "run_spec_worker", worker)
    cache = tmp_path / "plan" / "cache.jsonl"
    first = run({"model": "tiny", "batch": 2}, "tiny batch 2", cache)
    again = run({"batch": 2, "model": "tiny"}, "tiny batch 2", cache)  # key order is no matter
    other = run({"model": "tiny", "batch": 4}, "tiny batch 4", cache)
    assert first == again == {"total": 200} and other == {"total": 400}
    assert len(compiled) == 2 and len(cache.read_text().splitlines()) == 2
    assert run({"model": "tiny", "batch": 2}, "tiny batch 2") == {"total": 200}  # no cache
    assert len(compiled) == 3
