"""One V2V denoising step on this machine, and the compiled memory of V2V at the paper's size.

The model is the I2V benchmark's SD1.5 + AnimateDiff motion UNet (`benchmarks/i2v_step.py`)
with 8 input channels: mv2_jax converts it with `v2v_unet_from_i2v` (low-res channels at
conv_in, a 1000-level noise table); diffusers' `UNetMotionModel` has no class embedding, so its
twin is built with `in_channels=8` and no table (the table is one row lookup added to the time
embedding: negligible). One step = one UNet call on `[1, F, S/8, S/8, 8]` (batch 1, no
classifier-free-guidance doubling, as the I2V benchmark), fp32.

- `torch` / `jax`: each in its own process (peak RSS = VmHWM), first call, median of `--runs`;
- `memory`: compile only (nothing runs) of one CFG step at `--memory-size`² × `--memory-frames`
  (default 1024² × 32: latents `[2, 32, 128, 128, 8]`), bf16 params and compute, the chunked
  memory-efficient attention; and of the VAE encoding the low-res video (`--low-res`², default
  600 → 592, a multiple of 8) and decoding the output, `--chunk` frames per call in 512² tiles.
  XLA's `memory_analysis()`: arguments + outputs + temporaries.

    python benchmarks/v2v_step.py                          # everything, 256² × 16 frames
    python benchmarks/v2v_step.py --only memory
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, peak_rss_gb, run_worker, table, timed
from i2v_step import CONTEXT_DIM, FOLDER, compile_timed, prepare, timed_runs

KINDS = ("torch", "jax", "memory")
SD_VAE = dict(  # SD1.5's AutoencoderKL config
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=512,
)


def inputs(size: int, frames: int, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    h = size // 8
    return dict(
        sample=rng.standard_normal((batch, frames, h, h, 8), np.float32),
        timesteps=np.full((batch,), 500.0, np.float32),
        context=rng.standard_normal((batch, 77, CONTEXT_DIM), np.float32),
        levels=np.full((batch,), 20, np.int32),
    )


def torch_worker(size: int, frames: int, runs: int) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(2)
    x = inputs(size, frames)
    config = dict(diffusers.UNetMotionModel.load_config(FOLDER), in_channels=8)
    unet = diffusers.UNetMotionModel.from_config(config).eval()  # random: timing only
    sample = torch.from_numpy(x["sample"]).permute(0, 4, 1, 2, 3).contiguous()  # [B,C,F,H,W]
    t = torch.from_numpy(x["timesteps"])
    context = torch.from_numpy(x["context"]).repeat_interleave(frames, 0)

    def run():
        with torch.inference_mode():
            return unet(sample, t, context).sample

    first = timed(run)
    seconds, others = timed_runs({"step": run}, runs)
    return dict(first_call_s=first, seconds=seconds["step"], others=others["step"])


def v2v_unet(dtype=None):
    """(module, params) of the V2V UNet converted from the I2V benchmark's folder."""
    import jax.numpy as jnp

    from mv2_jax.models.motion import UNetMotionModel
    from mv2_jax.weights.load import load_component, read_config
    from mv2_jax.weights.v2v import v2v_unet_from_i2v

    dtype = dtype or jnp.float32
    _, params = load_component(FOLDER, dtype)
    config, params = v2v_unet_from_i2v(read_config(FOLDER), params)
    return UNetMotionModel.from_config(config, dtype=dtype, param_dtype=dtype), params


def jax_worker(size: int, frames: int, runs: int) -> dict:
    import jax

    x = inputs(size, frames)
    unet, params = v2v_unet()
    step = jax.jit(lambda p, s, t, c, lv: unet.apply({"params": p}, s, t, c, class_labels=lv))
    args = (params, x["sample"], x["timesteps"], x["context"], x["levels"])
    compile_s, step = compile_timed(step, *args)
    first = timed(lambda: jax.block_until_ready(step(*args)))
    seconds, others = timed_runs({"step": lambda: jax.block_until_ready(step(*args))}, runs)
    return dict(
        compile_s=compile_s,
        first_call_s=first,
        seconds=seconds["step"],
        others=others["step"],
        temp_gb=step.memory_analysis().temp_size_in_bytes / 2**30,
    )


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    parts = dict(
        args_gb=m.argument_size_in_bytes / 2**30,
        outputs_gb=m.output_size_in_bytes / 2**30,
        temp_gb=m.temp_size_in_bytes / 2**30,
    )
    return dict(parts, total_gb=sum(parts.values()))


def memory_worker(size: int, frames: int, low_res: int, chunk: int) -> dict:
    """Compiled (not run) memory of one CFG step and of the chunked, tiled VAE at `size`."""
    import jax
    import jax.numpy as jnp

    from mv2_jax.models.vae import AutoencoderKL

    bf16, shape = jnp.bfloat16, jax.ShapeDtypeStruct
    unet, params = v2v_unet(bf16)
    unet = unet.clone(attention_implementation="chunked")
    abstract = jax.tree.map(lambda p: shape(p.shape, bf16), params)
    h = size // 8

    def cfg_step(p, sample, t, context, levels, guidance):
        out = unet.apply({"params": p}, sample, t, context, class_labels=levels)
        uncond, cond = jnp.split(out, 2)
        return uncond + guidance * (cond - uncond)

    step_args = (
        abstract,
        shape((2, frames, h, h, 8), bf16),
        shape((2,), jnp.float32),
        shape((2, 77, CONTEXT_DIM), bf16),
        shape((2,), jnp.int32),
        shape((), jnp.float32),
    )
    print("compiling the CFG step", file=sys.stderr, flush=True)
    step_s, step = compile_timed(jax.jit(cfg_step), *step_args)

    vae = AutoencoderKL(**SD_VAE, dtype=bf16, param_dtype=bf16, attention_implementation="chunked")
    vae_params = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]

    def encode(p, video):  # low-res frames → posterior means, chunked and tiled
        return vae.apply({"params": p}, video, chunk, True, 512, method="encode_video").mean

    def decode(p, z):
        return vae.apply({"params": p}, z, chunk, True, 512, method="decode_video")

    print("compiling the VAE encode / decode", file=sys.stderr, flush=True)
    low = low_res // 8 * 8
    encode_s, encoded = compile_timed(
        jax.jit(encode), vae_params, shape((1, frames, low, low, 3), bf16)
    )
    decode_s, decoded = compile_timed(
        jax.jit(decode), vae_params, shape((1, frames, h, h, 4), bf16)
    )
    return dict(
        step=dict(_memory(step), compile_s=step_s),
        encode=dict(_memory(encoded), compile_s=encode_s, low_res=low),
        decode=dict(_memory(decoded), compile_s=decode_s),
    )


WORKER_FLAGS = ("size", "frames", "runs", "memory_size", "memory_frames", "low_res", "chunk")


def report_step(results: dict) -> None:
    torch_r = results.get("torch", {})
    t_torch = median(torch_r["seconds"]) if "seconds" in torch_r else None
    rows = []
    for kind, name in (("torch", "diffusers PyTorch (no class table)"), ("jax", "mv2_jax")):
        r = results.get(kind)
        if r is None:
            continue
        if "error" in r:
            rows.append([name, r["error"], "", "", "", "", ""])
            continue
        t = median(r["seconds"])
        rows.append([
            name,
            f"{r['compile_s']:.1f}" if "compile_s" in r else "— (eager)",
            f"{r['first_call_s']:.1f}",
            f"{t:.2f}",
            f"{t / t_torch:.2f}" if t_torch else "",
            f"{r['peak_rss_gb']:.2f}",
            f"{100 * max(r['others']):.0f}%",
        ])  # fmt: skip
        runs = [round(s, 2) for s in r["seconds"]]
        print(f"{name}: runs {runs}, load average {r['load']}")
    headers = ["framework", "compile s", "first call s", "step s (median)", "× PyTorch",
               "peak RSS GB", "others' CPU (max)"]  # fmt: skip
    print(table(headers, rows))


def report_memory(r: dict, args) -> None:
    if "error" in r:
        print(f"memory: {r['error']}")
        return
    h = args.memory_size // 8
    names = {
        "step": f"CFG step, latents [2,{args.memory_frames},{h},{h},8]",
        "encode": f"VAE encode {r['encode']['low_res']}² × {args.memory_frames} "
        f"({args.chunk} frames/call, 512² tiles)",
        "decode": f"VAE decode {args.memory_size}² × {args.memory_frames} "
        f"({args.chunk} frames/call, 512² tiles)",
    }
    rows = [
        [names[k], f"{v['args_gb']:.2f}", f"{v['outputs_gb']:.2f}", f"{v['temp_gb']:.2f}",
         f"{v['total_gb']:.2f}", f"{v['compile_s']:.0f}"]
        for k, v in r.items() if k in names
    ]  # fmt: skip
    headers = ["compiled (bf16, chunked attention)", "args GB", "outputs GB", "temp GB",
               "peak GB", "compile s"]  # fmt: skip
    print(table(headers, rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="step: height = width, pixels")
    parser.add_argument("--frames", type=int, default=16, help="step: frames per video")
    parser.add_argument("--runs", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--memory-size", type=int, default=1024, help="memory: target pixels")
    parser.add_argument("--memory-frames", type=int, default=32, help="memory: frames")
    parser.add_argument("--low-res", type=int, default=600, help="memory: low-res input pixels")
    parser.add_argument("--chunk", type=int, default=4, help="memory: frames per VAE call")
    parser.add_argument("--only", choices=KINDS, help="run one measurement")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        load_before = os.getloadavg()[0]
        if args.worker == "memory":
            result = memory_worker(args.memory_size, args.memory_frames, args.low_res, args.chunk)
        else:
            worker = {"torch": torch_worker, "jax": jax_worker}[args.worker]
            result = worker(args.size, args.frames, args.runs)
        result.update(peak_rss_gb=peak_rss_gb(), load=[load_before, os.getloadavg()[0]])
        print(json.dumps(result))
        return
    prepare()
    results = {}
    for kind in [args.only] if args.only else list(KINDS):
        results[kind] = run_worker(__file__, kind, {f: getattr(args, f) for f in WORKER_FLAGS})
        print(f"{kind}: {json.dumps(results[kind])}", flush=True)
    print(f"\nmachine: {machine()}")
    if "torch" in results or "jax" in results:
        h = args.size // 8
        print(f"\n## V2V step: {args.size}² × {args.frames} (latents [1,{args.frames},{h},{h},8])")
        report_step(results)
    if "memory" in results:
        report_memory(results["memory"], args)


if __name__ == "__main__":
    main()
