"""One I2V sampling step on this machine: the motion UNet, bare and with each conditioning.

The model is an SD1.5 UNet with AnimateDiff motion modules (diffusers' `UNet2DConditionModel`
SD1.5 config + `MotionAdapter()` defaults → `UNetMotionModel.from_unet2d`), random weights saved
once and loaded by both frameworks. One step = one motion-UNet call on `[1, F, S/8, S/8, 4]`
latents (batch 1, no classifier-free-guidance doubling), fp32.

- `jax`: mv2_jax's `UNetMotionModel`, jitted: compile time, first call, median of `--runs`.
- `torch`: diffusers' `UNetMotionModel` under `torch.inference_mode()`, 2 threads: first call,
  median of `--runs`. Each framework runs in its own process, one after the other, so that
  its peak RSS (VmHWM, loading included) is its own.
- `conditionings`: mv2_jax only, in one process, interleaved: the bare step against the same
  step with (a) reference attention (features of a reference latent from the appearance
  encoder, computed once and timed apart), (b) a SparseCtrl RGB ControlNet (simplified
  condition embedding, key image latent on frame 0), (c) an IP-Adapter (random weights in the
  original layout, 1024-d image embeds, 4 tokens), (d) all three.

    python benchmarks/i2v_step.py                      # everything, 256² × 16 frames
    python benchmarks/i2v_step.py --size 128 --frames 4 --runs 1 --only jax
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine, median, peak_rss_gb, run_worker, table, timed

FOLDER = CACHE / "i2v_motion_unet"
IP_ADAPTER = CACHE / "i2v_ip_adapter.safetensors"
CONTEXT_DIM, IMAGE_DIM, IP_TOKENS = 768, 1024, 4
KINDS = ("torch", "jax", "conditionings")


def prepare() -> None:
    """The motion UNet folder and a random IP-Adapter file for it, made once and reused."""
    if (FOLDER / "config.json").exists() and IP_ADAPTER.exists():
        return
    import diffusers
    import torch
    from safetensors.numpy import save_file

    torch.manual_seed(0)
    unet2d = diffusers.UNet2DConditionModel(cross_attention_dim=CONTEXT_DIM, sample_size=64)
    motion = diffusers.UNetMotionModel.from_unet2d(unet2d, diffusers.MotionAdapter())
    motion.save_pretrained(FOLDER, max_shard_size="1GB")
    save_file(random_ip_adapter(motion), IP_ADAPTER)


def random_ip_adapter(unet) -> dict[str, np.ndarray]:
    """A basic IP-Adapter for `unet` in the original layout: `image_proj.{proj,norm}` and
    `ip_adapter.{2k+1}.to_{k,v}_ip.weight` for the k-th spatial cross-attention."""
    rng = np.random.default_rng(1)
    state = {
        "image_proj.proj.weight": rng.standard_normal((IP_TOKENS * CONTEXT_DIM, IMAGE_DIM))
        / np.sqrt(IMAGE_DIM),
        "image_proj.proj.bias": np.zeros(IP_TOKENS * CONTEXT_DIM),
        "image_proj.norm.weight": np.ones(CONTEXT_DIM),
        "image_proj.norm.bias": np.zeros(CONTEXT_DIM),
    }
    names = [n for n in unet.attn_processors if "attn2" in n and "motion_modules" not in n]
    for k, name in enumerate(names):
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape[0]
        for kv in "kv":
            state[f"ip_adapter.{2 * k + 1}.to_{kv}_ip.weight"] = rng.standard_normal(
                (hidden, CONTEXT_DIM)
            ) / np.sqrt(CONTEXT_DIM)
    return {k: np.asarray(v, np.float32) for k, v in state.items()}


def inputs(size: int, frames: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    h = size // 8
    return dict(
        sample=rng.standard_normal((1, frames, h, h, 4), np.float32),
        timesteps=np.full((1,), 500.0, np.float32),
        context=rng.standard_normal((1, 77, CONTEXT_DIM), np.float32),
        reference=rng.standard_normal((1, h, h, 4), np.float32),
        image_embeds=rng.standard_normal((1, IMAGE_DIM), np.float32),
    )


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have been busy since boot, of which this process)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (sum(fields) - fields[3] - fields[4]) / tick, (int(mine[11]) + int(mine[12])) / tick


def timed_runs(fns: dict, runs: int) -> tuple[dict, dict]:
    """`runs` rounds of each function in turn (load falls on all alike): seconds per name, and
    the share of the machine's cores that other processes used meanwhile (the sandbox is
    shared; "others' CPU" of 0.5 means one of the 2 cores was taken)."""
    seconds = {name: [] for name in fns}
    others = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            busy0, mine0 = _busy_seconds()
            seconds[name].append(timed(fn))
            busy1, mine1 = _busy_seconds()
            foreign = max(0.0, (busy1 - busy0) - (mine1 - mine0))
            others[name].append(min(1.0, foreign / (seconds[name][-1] * os.cpu_count())))
    return seconds, others


def compile_timed(jitted, *args):
    """(seconds to lower + compile, the compiled function)."""
    out = {}
    seconds = timed(lambda: out.setdefault("c", jitted.lower(*args).compile()))
    return seconds, out["c"]


def torch_worker(size: int, frames: int, runs: int) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(2)
    x = inputs(size, frames)
    unet = diffusers.UNetMotionModel.from_pretrained(FOLDER).eval()
    sample = torch.from_numpy(x["sample"]).permute(0, 4, 1, 2, 3).contiguous()  # [B,C,F,H,W]
    t = torch.from_numpy(x["timesteps"])
    context = torch.from_numpy(x["context"]).repeat_interleave(frames, 0)  # one per frame

    def run():
        with torch.inference_mode():
            return unet(sample, t, context).sample

    first = timed(run)
    seconds, others = timed_runs({"step": run}, runs)
    return dict(first_call_s=first, seconds=seconds["step"], others=others["step"])


def jax_worker(size: int, frames: int, runs: int) -> dict:
    import jax

    import mv2_jax

    x = inputs(size, frames)
    unet, params = mv2_jax.load_component(FOLDER)
    args = ({"params": params}, x["sample"], x["timesteps"], x["context"])
    compile_s, step = compile_timed(jax.jit(unet.apply), *args)
    first = timed(lambda: jax.block_until_ready(step(*args)))
    seconds, others = timed_runs({"step": lambda: jax.block_until_ready(step(*args))}, runs)
    return dict(
        compile_s=compile_s,
        first_call_s=first,
        seconds=seconds["step"],
        others=others["step"],
        temp_gb=step.memory_analysis().temp_size_in_bytes / 2**30,
    )


def make_step(unet, controlnet):
    """A jitted step: the UNet with whichever conditionings are given (None = off)."""
    import jax
    import jax.numpy as jnp

    def step(params, sample, t, context, reference, control, image_embeds):
        variables = {"params": params["unet"]}
        if reference is not None:
            variables["reference"] = reference
        kwargs = {}
        if control is not None:
            cond, mask = control
            down, mid = controlnet.apply(
                {"params": params["controlnet"]}, sample, t, context, cond, 1.0, mask
            )
            kwargs = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if image_embeds is not None:
            kwargs["added_cond_kwargs"] = {
                "image_embeds": image_embeds,
                "ip_adapter_scale": jnp.float32(1.0),
            }
        return unet.apply(variables, sample, t, context, **kwargs)

    return jax.jit(step)


def conditionings_worker(size: int, frames: int, runs: int) -> dict:
    import jax

    import mv2_jax
    from mv2_jax.models.appearance import (
        appearance_encoder,
        encode_reference,
        spatial_params,
        with_reference_scale,
    )
    from mv2_jax.weights.controlnet import controlnet_from_unet
    from mv2_jax.weights.ip_adapter import load_ip_adapter

    x = inputs(size, frames)
    unet, params = mv2_jax.load_component(FOLDER)
    sample, t, context = x["sample"], x["timesteps"], x["context"]

    encoder = appearance_encoder(unet)
    encode = jax.jit(lambda p, latent, c: encode_reference(encoder, p, latent, c))
    encode_args = (spatial_params(params), x["reference"], context)
    encode_compile, encode = compile_timed(encode, *encode_args)
    jax.block_until_ready(encode(*encode_args))
    encode_s, encode_others = timed_runs(
        {"encode": lambda: jax.block_until_ready(encode(*encode_args))}, runs
    )
    reference = with_reference_scale(encode(*encode_args), 1.0)

    controlnet, controlnet_params = controlnet_from_unet(
        unet,
        params,
        sparse=True,
        conditioning_channels=4,
        use_simplified_condition_embedding=True,
    )
    mask = np.zeros((1, frames), np.float32)
    mask[:, 0] = 1.0  # the key image on the first frame, zeros elsewhere
    control = (x["reference"][:, None] * mask[:, :, None, None, None], mask)
    ip_unet, ip_params = load_ip_adapter(IP_ADAPTER, unet, params)

    plain, with_ip = make_step(unet, controlnet), make_step(ip_unet, controlnet)
    both = {"unet": params, "controlnet": controlnet_params}
    both_ip = {"unet": ip_params, "controlnet": controlnet_params}
    embeds = x["image_embeds"]
    setups = {  # name: (step, its args: params, sample, t, context, reference, control, embeds)
        "bare": (plain, ({"unet": params}, sample, t, context, None, None, None)),
        "+ reference attention": (
            plain,
            ({"unet": params}, sample, t, context, reference, None, None),
        ),
        "+ SparseCtrl RGB": (plain, (both, sample, t, context, None, control, None)),
        "+ IP-Adapter": (with_ip, ({"unet": ip_params}, sample, t, context, None, None, embeds)),
        "all three": (with_ip, (both_ip, sample, t, context, reference, control, embeds)),
    }
    compile_s, calls = {}, {}
    for name, (step, args) in setups.items():
        print(f"compiling {name}", file=sys.stderr, flush=True)
        compile_s[name], compiled = compile_timed(step, *args)
        calls[name] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
        calls[name]()  # first call, not timed
    seconds, others = timed_runs(calls, runs)
    return dict(
        encode_compile_s=encode_compile,
        encode_s=encode_s["encode"],
        encode_others=encode_others["encode"],
        others=others,
        compile_s=compile_s,
        seconds=seconds,
    )


WORKERS = {"torch": torch_worker, "jax": jax_worker, "conditionings": conditionings_worker}


def report_frameworks(results: dict) -> None:
    t_torch = median(results["torch"]["seconds"]) if "seconds" in results.get("torch", {}) else None
    rows = []
    for kind, name in (("torch", "diffusers PyTorch"), ("jax", "mv2_jax")):
        r = results.get(kind)
        if r is None:
            continue
        if "error" in r:
            rows.append([name, r["error"], "", "", "", "", ""])
            continue
        t = median(r["seconds"])
        rows.append(
            [
                name,
                f"{r['compile_s']:.1f}" if "compile_s" in r else "— (eager)",
                f"{r['first_call_s']:.1f}",
                f"{t:.2f}",
                f"{t / t_torch:.2f}" if t_torch else "",
                f"{r['peak_rss_gb']:.2f}",
                _share(r["others"]),
            ]
        )
        print(
            f"{name}: runs {_rounded(r['seconds'])}, others' CPU {_rounded(r['others'])}, "
            f"load average {r['load']}"
        )
    headers = [
        "framework",
        "compile s",
        "first call s",
        "step s (median)",
        "× PyTorch",
        "peak RSS GB",
        "others' CPU (max)",
    ]
    print(table(headers, rows))


def report_conditionings(r: dict) -> None:
    if "error" in r:
        print(f"conditionings: {r['error']}")
        return
    bare = median(r["seconds"]["bare"])
    rows = [
        [
            name,
            f"{median(s):.2f}",
            f"{median(s) / bare:.2f}",
            f"{r['compile_s'][name]:.1f}",
            _share(r["others"][name]),
        ]
        for name, s in r["seconds"].items()
    ]
    rows.append(
        [
            "reference encoder (once per video)",
            f"{median(r['encode_s']):.2f}",
            f"{median(r['encode_s']) / bare:.2f}",
            f"{r['encode_compile_s']:.1f}",
            _share(r["encode_others"]),
        ]
    )
    for name, s in r["seconds"].items():
        print(f"{name}: runs {_rounded(s)}, others' CPU {_rounded(r['others'][name])}")
    print(f"load average {r['load']}, peak RSS {r['peak_rss_gb']:.2f} GB")
    headers = ["conditioning", "step s (median)", "× bare", "compile s", "others' CPU (max)"]
    print(table(headers, rows))


def _rounded(xs: list[float]) -> list[float]:
    return [round(x, 2) for x in xs]


def _share(xs: list[float]) -> str:
    return f"{100 * max(xs):.0f}%"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="video height = width, pixels")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--runs", type=int, default=3, help="timed steps per measurement (median)")
    parser.add_argument(
        "--only", choices=KINDS, help="run one measurement: jax, torch, or conditionings (jax)"
    )
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        load_before = os.getloadavg()[0]
        result = WORKERS[args.worker](args.size, args.frames, args.runs)
        result.update(peak_rss_gb=peak_rss_gb(), load=[load_before, os.getloadavg()[0]])
        print(json.dumps(result))
        return
    prepare()
    kinds = [args.only] if args.only else list(KINDS)
    results = {}
    for kind in kinds:  # one at a time; each result printed as soon as it is in
        results[kind] = run_worker(
            __file__, kind, {f: getattr(args, f) for f in ("size", "frames", "runs")}
        )
        print(f"{kind}: {json.dumps(results[kind])}", flush=True)
    shape = f"{args.size}² × {args.frames} frames (latents [1,{args.frames},{args.size // 8},"
    print(f"\n## I2V step: SD1.5 + AnimateDiff motion UNet, {shape}{args.size // 8},4]), fp32")
    print(f"machine: {machine()}")
    if "torch" in results or "jax" in results:
        report_frameworks(results)
    if "conditionings" in results:
        report_conditionings(results["conditionings"])


if __name__ == "__main__":
    main()
