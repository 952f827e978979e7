"""One configuration of `benchmarks/plan.py`, compiled in its own process: its program built
(benchmarks/plan_programs.py) and compiled ahead of time with XLA's dumps on, and read from
them:

- memory per device from the buffer assignment (the numbers `memory_analysis()` reports:
  parameters, live-out outputs, those aliased to a parameter, the preallocated temp buffer);
- FLOPs per device: XLA's cost analysis of the program lowered with attention as plain matmuls,
  divided by the devices (`model_flops`; the cost analysis counts a loop body once, which
  would hide the blocked attention's FLOPs), and of the optimised, partitioned module as
  compiled (`compiled_flops`, what `cost_analysis()` reports, loops once);
- collectives from the module right after SPMD partitioning, in the program's own dtypes
  (XLA:CPU widens bf16 collectives to f32 later, in all-reduce promotion and bf16 float
  normalisation; GPU and TPU do not);
- the partitioner's "involuntary full rematerialization" warnings (a tensor replicated because
  the partitioner found no cheaper resharding: a missing sharding constraint, usually).

All of that is known once buffers are assigned, before XLA:CPU generates machine code (about
two thirds of a compile), so by default the worker reports then and exits (`full_compile`:
finish the compile and check the dumps' numbers against the executable's).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

# Flags that shorten XLA:CPU's compile (LLVM's work); the HLO passes that decide memory and
# collectives are unchanged.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# XLA:CPU's default scheduler starts every independent op as early as it can, to keep its
# threads busy: all of FSDP's parameter gathers up front, so the whole unsharded model is live
# at once (SD1.5's sampling step: 3.96 GiB of temp against 0.28 GiB). GPU and TPU schedule for
# memory (gathers shortly before their use); the memory-minimising scheduler is the closer
# stand-in, if a little optimistic (no gathers in flight ahead of their use).
MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
INVOLUNTARY = "Involuntary full rematerialization"


def set_xla_flags(devices: int, dump_dir: str) -> None:
    """XLA_FLAGS of a worker, set before jax is imported: `devices` simulated CPU devices, the
    fast-compile flags, the memory-minimising scheduler, every module dumped to `dump_dir` with
    the HLO around SPMD partitioning."""
    flags = [
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={devices}",
        FAST_COMPILE,
        MEMORY_SCHEDULER,
        f"--xla_dump_to={dump_dir}",
        "--xla_dump_hlo_pass_re=spmd-partitioning",
    ]
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f)


def worker(spec: dict, dump_dir: str) -> None:
    """Compile `spec`'s program and print its JSON line (see the module docstring)."""
    import jax
    from plan_programs import models, sampling_program, training_program

    from mv2_jax.models import conv
    from mv2_jax.models.attention_kernels import interpret_mode
    from mv2_jax.parallel.mesh import make_mesh

    if len(jax.devices()) != spec["devices"]:
        raise RuntimeError(f"{len(jax.devices())} devices, not {spec['devices']} (XLA_FLAGS?)")
    assert hasattr(conv, "_CUSTOM_MIN_CHANNELS")
    conv._CUSTOM_MIN_CHANNELS = math.inf  # XLA's convolution, as on GPU / TPU
    mesh = make_mesh(spec["mesh"])
    model = models()[spec["model"]]
    program, batch = spec["program"], spec["batch"]
    started = time.perf_counter()

    def build(attention: str):
        if program == "sample":
            return (*sampling_program(model, mesh, batch, attention), None)
        return training_program(model, mesh, batch, attention, program, spec["lora_rank"])

    known = {"mesh_devices": mesh.size}
    if not spec.get("memory_only"):
        # FLOPs of the whole program with attention as plain matmuls: XLA's cost analysis
        # counts a loop body once, so the blocked forms (chunked, splash) would hide theirs.
        jitted, args, _, _ = build("xla")
        with jax.set_mesh(mesh):
            lowered = jitted.lower(*args)
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        known["model_flops"] = float(cost.get("flops", 0.0)) / mesh.size
        del lowered
    jitted, args, stage, paths = build(spec["attention"])
    if not spec.get("memory_only"):
        known["minimum"] = minimum_bytes(program, args, stage, paths, model, mesh, batch)
    log = Path(dump_dir) / "stderr.txt"
    if not spec.get("full_compile"):
        threading.Thread(
            target=_report_when_assigned, args=(dump_dir, log, known, started), daemon=True
        ).start()
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "wb") as file:  # XLA's C++ warnings too
        os.dup2(file.fileno(), 2)
        try:
            with jax.set_mesh(mesh), interpret_mode(spec["attention"] in ("splash", "auto:tpu")):
                compiled = jitted.lower(*args).compile()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    result = summarize(dump_dir, log, known, started)
    memory = compiled.memory_analysis()
    executable = dict(
        argument=memory.argument_size_in_bytes,
        output=memory.output_size_in_bytes,
        alias=memory.alias_size_in_bytes,
        temp=memory.temp_size_in_bytes,
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    result["code"] = memory.generated_code_size_in_bytes
    result["dump_matches"] = all(result[k] == v for k, v in executable.items()) and (
        "compiled_flops" not in result or result["compiled_flops"] == float(cost.get("flops", 0.0))
    )
    print(json.dumps(result), flush=True)


def _report_when_assigned(dump_dir: str, log: Path, known: dict, started: float) -> None:
    """Wait for the program's buffer assignment, print the result, end the process (XLA's
    code generation would only cost time)."""
    while _dump(dump_dir, "cpu_after_optimizations-memory-usage-report") is None:
        time.sleep(1.0)
    time.sleep(2.0)  # the report is the last of the dumps that follow buffer assignment
    print(json.dumps(summarize(dump_dir, log, known, started)), flush=True)
    sys.stderr.flush()
    os._exit(0)


def _dump(dump_dir: str, suffix: str) -> Path | None:
    """The dump of the step's module (`jit_step`) ending in `suffix`.txt, if written."""
    found = sorted(Path(dump_dir).glob(f"*jit_step*{suffix}.txt"), key=os.path.getsize)
    return found[-1] if found else None


def summarize(dump_dir: str, log: Path, known: dict, started: float) -> dict:
    """The result line from the dumps (see the module docstring)."""
    from mv2_jax.parallel.collectives import bytes_by_kind, collectives

    result = dict(compile_s=time.perf_counter() - started, code=0, **known)
    result.update(buffer_memory(_dump(dump_dir, "cpu_after_optimizations-buffer-assignment")))
    warnings = [x for x in log.read_text(errors="replace").splitlines() if INVOLUNTARY in x]
    result["involuntary"] = len(warnings)
    result["involuntary_ops"] = sorted({_op_name(x) for x in warnings})[:20]
    if "minimum" not in known:  # memory only
        return result
    optimized = _dump(dump_dir, "cpu_after_optimizations").read_text()
    result["compiled_flops"] = module_flops(optimized)
    partitioned = _dump(dump_dir, "after_spmd-partitioning.*")
    ops = collectives(partitioned.read_text() if partitioned else optimized)
    result["collectives_from"] = "partitioned" if partitioned else "compiled (XLA:CPU dtypes)"
    result["collectives"] = bytes_by_kind(ops)
    result["compiled_collectives"] = bytes_by_kind(collectives(optimized))
    result["top_collectives"] = [
        dict(kind=op.effective_kind, shape=op.shape[:120], bytes=op.bytes_moved * op.executions,
             group=op.group_size, source=op.source[-160:])
        for op in sorted(ops, key=lambda op: -op.bytes_moved * op.executions)[:8]
    ]  # fmt: skip
    return result


def buffer_memory(path: Path) -> dict:
    """Per-device bytes from a buffer-assignment dump, as `memory_analysis()` counts them:
    `argument` (parameter allocations), `output` (live-out allocations, parameters donated
    to the output included), `alias` (those parameters), `temp` (the preallocated temp
    buffer); `total` = argument + output − alias + temp."""
    out = dict(argument=0, output=0, alias=0, temp=0)
    for line in path.read_text().splitlines():
        found = re.match(r"allocation \d+: size (\d+), (.*)", line)
        if found is None:
            continue
        size, what = int(found.group(1)), found.group(2)
        live = "maybe-live-out" in what or what.startswith("output shape")
        if what.startswith("parameter"):
            out["argument"] += size
            if live:
                out["alias"] += size
                out["output"] += size
        elif what.startswith("preallocated-temp"):
            out["temp"] += size
        elif live:
            out["output"] += size
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def module_flops(hlo_text: str) -> float:
    """FLOPs of an optimised HLO module (XLA's cost analysis, as `compiled.cost_analysis()`)."""
    import jax
    import jaxlib._hlo as hlo
    from jax._src.lib import _jax

    module = hlo.hlo_module_from_text(hlo_text)
    return float(_jax.hlo_module_cost_analysis(jax.devices()[0].client, module).get("flops", 0))


def _op_name(warning: str) -> str:
    """The jax op a partitioner warning names (its `op_name` metadata, the module path)."""
    found = re.search(r'op_name="([^"]*)"', warning)
    return found.group(1) if found else warning[:200]


# ---- what the sharding implies


def minimum_bytes(program, args, stage, paths, model, mesh, batch) -> dict:
    """Bytes per device that the sharding implies, by purpose, with `n_X` the size of the mesh
    axes X (D: those the batch is split over; A: those a param is split over):

    - `gather`: every sharded param gathered in the compute dtype, S·(n_A−1)/n_A, once per
      forward of the UNet: 1 for `sample`; 1 + (remat ≠ none) for a trained forward, whose
      backward re-runs it (FSDP's "params once forward, once more if rematerialised");
      Diffusion-DPO adds the frozen reference's forward.
    - `grads`: each trainable param's gradient summed over D and left split over A: a
      reduce-scatter over D then an all-gather over D∖A, S·(n_D + n_D/n_A − 2)/n_D (pure FSDP,
      A = D: S·(n_D−1)/n_D; data parallel, A = ∅: 2·S·(n_D−1)/n_D), S in the compute dtype:
      what is summed is the gradient of the compute-dtype copy each layer casts its params to,
      converted to the params' fp32 after the sum.
    - `frames`: a video's rows `[B·F]` are split over all of D (`video_rows`), so when the
      UNet's batch B (doubled under guidance and for DPO's pairs) is smaller than n_D, each
      video spans k = n_D / B devices, and each motion module swaps frames for pixels and back
      among them: two all-to-alls of its input, X·(k−1)/k each (X the per-device bytes in the
      compute dtype), per forward pass, as many in the backward (+1 forward if remat). With
      B ≥ n_D every device holds whole videos: nothing to swap."""
    import jax
    import numpy as np
    from plan_programs import motion_module_inputs

    from mv2_jax.training.optim import split_params

    params = args[0] if program == "sample" else args[0].params
    unet = stage.model if program == "dpo" else getattr(stage, "inner", stage)
    compute = np.dtype(unet.denoiser.dtype).itemsize
    remat = unet.denoiser.remat_policy != "none"
    if program == "sample":
        latents = args[1]["latents"]
    else:
        latents = args[2]["chosen_latents" if program == "dpo" else "latents"]
    batch_axes = [a for entry in latents.sharding.spec[:2] if entry for a in _axes(entry)]
    n_batch = math.prod(mesh.shape[a] for a in batch_axes)
    forward_only, trained = {"sample": (1, 0), "dpo": (1, 1)}.get(program, (0, 1))

    def split_over(leaf):
        return [a for entry in leaf.sharding.spec if entry for a in _axes(entry)]

    gather = 0.0
    for leaf in jax.tree.leaves(params):
        n = math.prod(mesh.shape[a] for a in split_over(leaf))
        gather += leaf.size * compute * (n - 1) / n
    gather *= forward_only + trained * (1 + remat)

    grads = 0.0
    if trained:
        for leaf in jax.tree.leaves(split_params(params, paths)[0]):
            axes = split_over(leaf)
            n_a = math.prod(mesh.shape[a] for a in axes if a in batch_axes)
            outside = math.prod(mesh.shape[a] for a in axes if a not in batch_axes)
            size = leaf.size * compute / outside
            grads += size * (n_batch + n_batch / n_a - 2) / n_batch

    frames = 0.0
    unet_batch = batch * (2 if program in ("sample", "dpo") else 1)  # guidance; DPO's pairs
    group = n_batch // math.gcd(n_batch, unet_batch)  # devices that share one video
    if group > 1 and model.frames:
        inputs = motion_module_inputs(unet, unet_batch, model)
        per_forward = sum(2 * math.prod(s) * compute / n_batch for s in inputs)
        frames = per_forward * (group - 1) / group
        frames *= forward_only + trained * (2 + remat)
    return {"gather": gather, "grads": grads, "frames": frames}


def _axes(entry) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)
