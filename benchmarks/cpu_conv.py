"""Convolutions on the CPU: compile and run time of a 3×3 convolution stack in the forms
`mv2_jax.models.conv.Conv` can take there — XLA's own convolution, and the im2col / Winograd
forms it uses for wide convolutions (≥ `_CUSTOM_MIN_CHANNELS` channels) — next to PyTorch's
conv2d on the same input, at the shapes world's widths and at SD's.

Each case is a stack of `--depth` 3×3 stride-1 convolutions with SiLU between them (about
what one UNet level holds), so compile times are those of a realistic program size.

    python benchmarks/cpu_conv.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, median, table, time_interleaved

# (batch, side, channels): shapes-world latents (16², 32²) at its widths, SD1.5 at 64² latents
CASES = ((16, 16, 32), (16, 32, 64), (2, 64, 320), (2, 32, 640))


def jax_stack(form: str, batch: int, side: int, channels: int, depth: int):
    """(compile seconds, a function running the compiled stack once) for `form`."""
    import jax
    import jax.numpy as jnp

    from mv2_jax.models import conv

    conv._CUSTOM_MIN_CHANNELS = 10**9 if form == "xla" else 1
    layers = [conv.Conv(channels, (3, 3), (1, 1), ((1, 1), (1, 1))) for _ in range(depth)]
    x = jnp.ones((batch, side, side, channels), jnp.float32)
    params = [layer.init(jax.random.key(i), x)["params"] for i, layer in enumerate(layers)]

    def stack(params, x):
        for layer, p in zip(layers, params):
            x = jax.nn.silu(layer.apply({"params": p}, x))
        return x

    start = time.perf_counter()
    compiled = jax.jit(stack).lower(params, x).compile()
    seconds = time.perf_counter() - start
    return seconds, lambda: jax.block_until_ready(compiled(params, x))


def torch_stack(batch: int, side: int, channels: int, depth: int):
    import torch

    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        *[m for _ in range(depth) for m in (torch.nn.Conv2d(channels, channels, 3, padding=1),
                                             torch.nn.SiLU())]
    )  # fmt: skip
    x = torch.ones(batch, channels, side, side)

    def run():
        with torch.no_grad():
            layers(x)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=8, help="convolutions per stack (8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per form (5)")
    args = parser.parse_args(argv)
    rows = []
    for batch, side, channels in CASES:
        compile_s, fns = {}, {}
        for form in ("xla", "custom"):
            compile_s[form], fns[form] = jax_stack(form, batch, side, channels, args.depth)
        fns["torch"] = torch_stack(batch, side, channels, args.depth)
        for fn in fns.values():
            fn()  # warm up
        runs = {k: median(v) * 1000 for k, v in time_interleaved(fns, args.repeats).items()}
        custom = "im2col" if side * side <= 256 else "Winograd"
        rows.append([
            f"{batch}×{side}²×{channels}", f"{compile_s['xla']:.2f}", f"{compile_s['custom']:.2f}",
            f"{runs['xla']:.1f}", f"{runs['custom']:.1f} ({custom})", f"{runs['torch']:.1f}",
            f"{runs['torch'] / runs['xla']:.2f}", f"{runs['torch'] / runs['custom']:.2f}",
        ])  # fmt: skip
    print(machine())
    print(f"a stack of {args.depth} 3×3 convolutions + SiLU, fp32, median of {args.repeats}")
    headers = [
        "input", "compile s: XLA conv", "compile s: CPU form", "run ms: XLA conv",
        "run ms: CPU form", "run ms: torch", "torch/XLA", "torch/CPU form",
    ]  # fmt: skip
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
