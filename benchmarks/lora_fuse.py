"""Fusing a LoRA into an SD1.5-size UNet (issue 19: rank 64 in ≤ 2 s, and no recompile when the
scale changes), against diffusers + peft's `fuse_lora` on the same weights, in the same run.

The LoRA (random, rank `--rank`, on every attention projection: to_q, to_k, to_v, to_out.0) is
made with peft on the diffusers UNet and read by both sides from the state dict diffusers would
save. Ours: `mv2_jax.lora.merge_lora` on the params as `load_component` gives them (jitted per
param; the first fuse compiles, later ones with other scales must not); diffusers:
`unet.fuse_lora(lora_scale=s)` then `unfuse_lora()`. Seconds are wall time to fused params in
memory (`block_until_ready`), the median of `--repeats` scales.

    python benchmarks/lora_fuse.py [--rank 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from common import machine, median, table
from unet_step import reference_folder

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def torch_unet_with_lora(rank: int):
    """(diffusers UNet with the LoRA loaded as diffusers loads one, its state dict, alpha)."""
    import diffusers
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    unet = diffusers.UNet2DConditionModel.from_pretrained(reference_folder("sd15"))
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False)
    unet.add_adapter(config, adapter_name="bench")
    with torch.no_grad():  # init_lora_weights=False draws both factors at random
        state = {
            k: v.clone() for k, v in get_peft_model_state_dict(unet, adapter_name="bench").items()
        }
    return unet, state


def time_torch(unet, scales) -> list[float]:
    seconds = []
    for scale in scales:
        start = time.perf_counter()
        unet.fuse_lora(lora_scale=scale, adapter_names=["bench"])
        seconds.append(time.perf_counter() - start)
        unet.unfuse_lora()
    return seconds


def time_ours(state, scales) -> tuple[float, list[float], int]:
    """(first fuse s, later fuses s, compiles during the later ones)."""
    import jax

    import mv2_jax
    from mv2_jax.lora import bind_lora, merge_lora, parse_lora

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: (
            compiles.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    module, params = mv2_jax.load_component(reference_folder("sd15"))
    adapter = parse_lora({f"unet.{k}": v.numpy() for k, v in state.items()}, source="bench")
    bound = bind_lora(adapter, "unet", module, params)

    def fuse(scale):
        start = time.perf_counter()
        jax.block_until_ready(merge_lora(params, [(bound, scale)]))
        return time.perf_counter() - start

    first = fuse(1.0)
    before = len(compiles)
    later = [fuse(s) for s in scales]
    return first, later, len(compiles) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scales = [0.5 + 0.1 * i for i in range(args.repeats)]
    unet, state = torch_unet_with_lora(args.rank)
    factors = sum(v.numel() for v in state.values())
    torch_seconds = median(time_torch(unet, scales))
    del unet
    first, later, compiles = time_ours(state, scales)
    ours = median(later)
    print(f"{machine()}; SD1.5 UNet, rank-{args.rank} LoRA on {', '.join(TARGETS)}: "
          f"{len(state) // 2} modules, {factors / 1e6:.1f} M LoRA params\n")  # fmt: skip
    print(table(
        ["fuse", "mv2-jax s", "diffusers + peft s", "ratio (ours / theirs)"],
        [
            ["first (compiles)", f"{first:.2f}", "", ""],
            [f"other scales (median of {len(later)})", f"{ours:.2f}", f"{torch_seconds:.2f}",
             f"{ours / torch_seconds:.2f}"],
            ["compiles when the scale changes", compiles, "", ""],
        ],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
