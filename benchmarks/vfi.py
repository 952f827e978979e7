"""Frame interpolation on this machine: the backward warp and the interpolator's throughput.

- `warp`: `mv2_jax.models.warp.backward_warp` (custom VJP) against the same bilinear sampling
  differentiated by JAX (four gathers → four scatters) and torch `grid_sample` (bilinear,
  border, align_corners=True; 2 threads): forward, and forward + backward (the output and the
  gradients w.r.t. image and flow for a given output cotangent). Images `[B,S,S,3]`, fp32,
  a smooth random flow of up to ±S/8 pixels (some samples fall outside and are clamped).
- `model`: new frames per second of `FrameInterpolationPipeline` (one jitted call per batch of
  (pair, t) jobs) at S², with the weights shipped in mv2_jax/assets/vfi if present, else a
  random init of the default `FrameInterpolator` config (the table says which).

Every row's calls are interleaved round by round (load falls on all alike); "others' CPU" is
the largest share of the two cores other processes used during a timed call.

    python benchmarks/vfi.py                       # both, 256² and 1024²
    python benchmarks/vfi.py --only warp --sizes 256 --batches 1 --runs 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, median, peak_rss_gb, table, timed
from i2v_step import compile_timed, timed_runs  # interleaved runs with others' CPU share

# The plain-JAX bilinear sampling the tests check backward_warp against (four gathers; its
# autodiff transpose is four scatter-adds).
from tests.models.test_warp import _autodiff_warp as autodiff_warp

KINDS = ("warp", "model")


def smooth_flow(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """`[B,S,S,2]` flow: a random 5×5 field bilinearly upsampled, up to ±S/8 pixels."""
    import jax

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (batch, 5, 5, 2)).astype(np.float32) * size / 8
    return np.array(jax.image.resize(coarse, (batch, size, size, 2), "linear"))


def jax_calls(warp, image, flow, cotangent) -> dict:
    """`{"fwd": call, "fwd+bwd": call}` for a jitted JAX warp, compiled and run once."""
    import jax

    def forward_backward(image, flow, cotangent):
        out, vjp = jax.vjp(warp, image, flow)
        return (out, *vjp(cotangent))

    calls = {}
    for name, fn, args in (
        ("fwd", warp, (image, flow)),
        ("fwd+bwd", forward_backward, (image, flow, cotangent)),
    ):
        _, compiled = compile_timed(jax.jit(fn), *args)
        calls[name] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
        calls[name]()
    return calls


def torch_calls(image, flow, cotangent) -> dict:
    import torch

    torch.set_num_threads(2)
    f = torch.nn.functional
    _, h, w, _ = image.shape
    image_t = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
    flow_t = torch.from_numpy(flow)
    cotangent_t = torch.from_numpy(cotangent).permute(0, 3, 1, 2).contiguous()
    grid_y, grid_x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    base = torch.stack([grid_x, grid_y], dim=-1)
    scale = torch.tensor([2 / (w - 1), 2 / (h - 1)])

    def warp(image, flow):  # pixels → [-1, 1] (align_corners=True), then sample
        grid = (base + flow) * scale - 1
        return f.grid_sample(
            image, grid, mode="bilinear", padding_mode="border", align_corners=True
        )

    def forward():
        with torch.no_grad():
            return warp(image_t, flow_t)

    def forward_backward():
        image = image_t.detach().requires_grad_(True)
        flow = flow_t.detach().requires_grad_(True)
        out = warp(image, flow)
        out.backward(cotangent_t)
        return out, image.grad, flow.grad

    forward(), forward_backward()
    return {"fwd": forward, "fwd+bwd": forward_backward}


def warp_rows(sizes: list[int], batches: list[int], runs: int) -> list[list]:
    from mv2_jax.models.warp import backward_warp

    rows = []
    for size in sizes:
        for batch in batches:
            rng = np.random.default_rng(0)
            image = rng.random((batch, size, size, 3), np.float32)
            flow = smooth_flow(batch, size)
            cotangent = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
            print(f"warp {size}² B={batch}", file=sys.stderr, flush=True)
            impls = {
                "custom VJP": jax_calls(backward_warp, image, flow, cotangent),
                "JAX autodiff": jax_calls(autodiff_warp, image, flow, cotangent),
                "torch": torch_calls(image, flow, cotangent),
            }
            calls = {f"{i}|{p}": fn for i, c in impls.items() for p, fn in c.items()}
            seconds, others = timed_runs(calls, runs)
            ms = {k: 1e3 * median(v) for k, v in seconds.items()}
            share = max(max(v) for v in others.values())
            for part in ("fwd", "fwd+bwd"):
                ours = ms[f"custom VJP|{part}"]
                rows.append(
                    [
                        f"{size}²",
                        batch,
                        part,
                        f"{ours:.1f}",
                        f"{ms[f'JAX autodiff|{part}']:.1f}",
                        f"{ms[f'torch|{part}']:.1f}",
                        f"{ms[f'JAX autodiff|{part}'] / ours:.2f}",
                        f"{ms[f'torch|{part}'] / ours:.2f}",
                        f"{100 * share:.0f}%",
                    ]
                )
            print(table(WARP_HEADERS, rows[-2:]), file=sys.stderr, flush=True)
    return rows


WARP_HEADERS = [
    "size",
    "B",
    "pass",
    "custom VJP ms",
    "JAX autodiff ms",
    "torch ms",
    "autodiff / custom",
    "torch / custom",
    "others' CPU (max)",
]


def model_rows(sizes: list[int], runs: int) -> tuple[list[list], str]:
    import jax
    import jax.numpy as jnp

    from mv2_jax.models.vfi import FrameInterpolator
    from mv2_jax.pipelines.vfi import SHIPPED_WEIGHTS, FrameInterpolationPipeline, load_vfi_pipeline

    if (SHIPPED_WEIGHTS / "config.json").exists():
        pipe, which = load_vfi_pipeline(), f"shipped weights ({SHIPPED_WEIGHTS.name}/)"
    else:
        module = FrameInterpolator()
        m = module.size_multiple
        frame = jnp.zeros((1, m, m, 3))
        params = jax.jit(lambda: module.init(jax.random.key(0), frame, frame, jnp.ones(1)))()
        pipe, which = FrameInterpolationPipeline(module, params["params"]), "random init"
    fields = ("block_channels", "block_scales", "num_res", "refine_channels")
    which += ": " + ", ".join(f"{name} {getattr(pipe.module, name)}" for name in fields)
    rows = []
    for size in sizes:
        # ×3 of a clip: 2 new frames per pair; 4 pairs at 256² (8 new frames, one batch of 8),
        # 1 pair at 1024² (2 new frames, one batch of 2)
        pairs, batch = (4, 8) if size <= 512 else (1, 2)
        rng = np.random.default_rng(0)
        video = rng.integers(0, 256, (pairs + 1, size, size, 3), dtype=np.uint8)
        print(f"model {size}²", file=sys.stderr, flush=True)
        first = timed(lambda v=video, b=batch: pipe(v, factor=3, batch_size=b))
        seconds, others = timed_runs({"pipe": lambda v=video, b=batch: pipe(v, 3, b)}, runs)
        t = median(seconds["pipe"])
        new = 2 * pairs
        rows.append(
            [
                f"{size}²",
                batch,
                new,
                f"{first:.1f}",
                f"{t:.2f}",
                f"{new / t:.2f}",
                f"{1e3 * t / new:.0f}",
                f"{100 * max(others['pipe']):.0f}%",
            ]
        )
        print(table(MODEL_HEADERS, rows[-1:]), file=sys.stderr, flush=True)
    return rows, which


MODEL_HEADERS = [
    "size",
    "batch",
    "new frames per call",
    "first call s (compile)",
    "call s (median)",
    "new frames/s",
    "ms per new frame",
    "others' CPU (max)",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="S of S²")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="warp batch B")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--only", choices=KINDS, help="one part: warp or model")
    args = parser.parse_args(argv)
    kinds = [args.only] if args.only else list(KINDS)
    load = [os.getloadavg()[0]]
    print(f"machine: {machine()}")
    if "warp" in kinds:
        rows = warp_rows(args.sizes, args.batches, args.runs)
        print("\n## Backward warp: custom VJP vs JAX autodiff vs torch grid_sample (fp32, C=3)")
        print(table(WARP_HEADERS, rows))
    if "model" in kinds:
        rows, which = model_rows(args.sizes, args.runs)
        print(f"\n## Interpolator throughput (×3, fp32): {which}")
        print(table(MODEL_HEADERS, rows))
    load.append(os.getloadavg()[0])
    print(f"\nload average {load[0]:.1f} → {load[1]:.1f}; peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
