"""One classifier-free-guidance UNet step on this machine: mv2_jax vs diffusers PyTorch.

`--model sd15`: the full-size SD1.5 UNet (random weights, one diffusers model saved once and
loaded by both), batch 2 (cond + uncond), 64×64 latents, fp32; timings interleaved, median of
`--repeats`; first-call compile time; GFLOP/s; a per-op breakdown from a jax profile; with
`--diffusers-flax`, also diffusers' own Flax UNet (0.39, the last release that had one).
`--model sdxl`: SDXL's UNet at 1024² (batch 1) once per framework, each in its own process so
that peak memory is its own.

    python benchmarks/unet_step.py --model sd15 --repeats 3 --diffusers-flax
    python benchmarks/unet_step.py --model sdxl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    machine,
    median,
    op_breakdown,
    peak_rss_gb,
    rss_gb,
    table,
    time_interleaved,
    timed,
)

SD15_FLOPS = 1.354e12  # one step, batch 2, 64×64 latents (issue #2)
SD15 = dict(cross_attention_dim=768, sample_size=64)
SDXL = dict(
    sample_size=128,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SETUPS = {  # name: (config, batch, latent size, context dim)
    "sd15": (SD15, 2, 64, 768),
    "sdxl": (SDXL, 1, 128, 2048),
}
DIFFUSERS_FLAX = "0.39.0"


def reference_folder(model: str) -> Path:
    """A diffusers UNet with random (default-init) weights, saved once and reused."""
    folder = CACHE / f"{model}_unet"
    if not (folder / "config.json").exists():
        import diffusers
        import torch

        torch.manual_seed(0)
        # shards keep save_pretrained's transient copy small (SDXL's UNet is 10 GB in fp32)
        unet = diffusers.UNet2DConditionModel(**SETUPS[model][0])
        unet.save_pretrained(folder, max_shard_size="1GB")
    return folder


def inputs(model: str):
    _, batch, size, context_dim = SETUPS[model]
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((batch, size, size, 4), np.float32)
    timesteps = np.full((batch,), 500.0, np.float32)
    context = rng.standard_normal((batch, 77, context_dim), np.float32)
    extra = {}
    if model == "sdxl":
        extra = {
            "text_embeds": rng.standard_normal((batch, 1280), np.float32),
            "time_ids": np.tile(np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32), (batch, 1)),
        }
    return sample, timesteps, context, extra


def jax_step(folder: Path, model: str, attention: str):
    """(jitted step, its args); the first call compiles."""
    import jax

    import mv2_jax

    module, params = mv2_jax.load_component(folder)
    module = module.clone(attention_implementation=attention)
    sample, t, context, extra = inputs(model)
    step = jax.jit(module.apply)
    args = ({"params": params}, sample, t, context, extra or None)
    return step, args


def torch_step(folder: Path, model: str):
    import diffusers
    import torch

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder).eval()
    sample, t, context, extra = inputs(model)
    args = (
        torch.from_numpy(sample).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(t),
        torch.from_numpy(context),
    )
    extra = {k: torch.from_numpy(v) for k, v in extra.items()} or None

    def run():
        with torch.no_grad():
            return unet(*args, added_cond_kwargs=extra).sample

    return run


def worker(kind: str, model: str, attention: str, repeats: int) -> dict:
    """Runs in its own process: time one framework, report seconds and peak memory."""
    import jax

    folder = reference_folder(model)
    if kind == "jax":
        step, args = jax_step(folder, model, attention)
        loaded_gb = rss_gb()
        first = timed(lambda: jax.block_until_ready(step(*args)))
        temp_gb = step.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**30
        runs = [timed(lambda: jax.block_until_ready(step(*args))) for _ in range(repeats)]
        return dict(
            first_call_s=first,
            seconds=runs,
            peak_rss_gb=peak_rss_gb(),
            loaded_rss_gb=loaded_gb,
            activations_gb=temp_gb,
            final_rss_gb=rss_gb(),
        )
    if kind == "torch":
        run = torch_step(folder, model)
        runs = [timed(run) for _ in range(repeats + 1)][1:]
        return dict(seconds=runs, peak_rss_gb=peak_rss_gb(), final_rss_gb=rss_gb())
    if kind == "diffusers-flax":
        return diffusers_flax_worker(folder, model, repeats)
    if kind == "prepare":
        return {}
    raise ValueError(kind)


def diffusers_flax_worker(folder: Path, model: str, repeats: int) -> dict:
    import jax
    from diffusers import FlaxUNet2DConditionModel
    from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
    from safetensors.torch import load_file

    unet = FlaxUNet2DConditionModel.from_config(json.loads((folder / "config.json").read_text()))
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    params = convert_pytorch_state_dict_to_flax(state, unet)
    sample, t, context, _ = inputs(model)
    step = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c).sample)
    nchw = np.ascontiguousarray(np.moveaxis(sample, -1, 1))
    first = timed(lambda: jax.block_until_ready(step(params, nchw, t, context)))
    runs = [
        timed(lambda: jax.block_until_ready(step(params, nchw, t, context))) for _ in range(repeats)
    ]
    return dict(first_call_s=first, seconds=runs, peak_rss_gb=peak_rss_gb())


def in_subprocess(
    kind: str, model: str, attention: str, repeats: int, pythonpath: str = ""
) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model",
        model,
        "--attention",
        attention,
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def diffusers_flax_path() -> str:
    """diffusers 0.39 installed beside (not into) this environment, for its Flax UNet."""
    target = CACHE / f"diffusers-{DIFFUSERS_FLAX}"
    if not target.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                f"diffusers=={DIFFUSERS_FLAX}",
            ],
            check=True,
        )
    return str(target)


def sd15(args) -> None:
    import jax

    folder = reference_folder("sd15")
    step, jargs = jax_step(folder, "sd15", args.attention)
    first = timed(lambda: jax.block_until_ready(step(*jargs)))
    run_torch = torch_step(folder, "sd15")
    run_torch()  # warm-up
    runs = time_interleaved(
        {"mv2_jax": lambda: jax.block_until_ready(step(*jargs)), "PyTorch": run_torch},
        args.repeats,
    )
    t_jax, t_torch = median(runs["mv2_jax"]), median(runs["PyTorch"])
    rows = [
        [
            "mv2_jax",
            f"{t_jax:.2f}",
            f"{t_jax / t_torch:.2f}",
            f"{SD15_FLOPS / t_jax / 1e9:.0f}",
            f"{first:.1f}",
        ],
        [
            "diffusers PyTorch",
            f"{t_torch:.2f}",
            "1.00",
            f"{SD15_FLOPS / t_torch / 1e9:.0f}",
            "",
        ],
    ]
    if args.diffusers_flax:
        flax_result = in_subprocess(
            "diffusers-flax", "sd15", args.attention, args.repeats, diffusers_flax_path()
        )
        t_flax = median(flax_result["seconds"])
        rows.append(
            [
                f"diffusers-flax {DIFFUSERS_FLAX}",
                f"{t_flax:.2f}",
                f"{t_flax / t_torch:.2f}",
                f"{SD15_FLOPS / t_flax / 1e9:.0f}",
                f"{flax_result['first_call_s']:.1f}",
            ]
        )
        print(f"mv2_jax / diffusers-flax: {t_jax / t_flax:.2f}")
    print(f"\n## SD1.5 UNet, one CFG step (batch 2, 64×64, fp32), attention={args.attention}")
    print(f"machine: {machine()}")
    print(f"all runs (s): { {k: [round(x, 2) for x in v] for k, v in runs.items()} }")
    print(
        table(
            ["implementation", "median s", "× PyTorch", "GFLOP/s", "first call s (compile + run)"],
            rows,
        )
    )
    if not args.no_profile:
        parts = op_breakdown(step, *jargs)
        total = sum(parts.values())
        print("\nper-op time of one mv2_jax step (profile; op time summed over threads)")
        print(
            table(
                ["ops", "s", "share"],
                [[k, f"{v:.2f}", f"{100 * v / total:.0f}%"] for k, v in parts.items()],
            )
        )


def sdxl(args) -> None:
    in_subprocess("prepare", "sdxl", args.attention, 0)  # the 10 GB model, out of this process
    rows = []
    for kind in ("torch", "jax"):
        r = in_subprocess(kind, "sdxl", args.attention, 1)
        rows.append(
            [
                kind,
                f"{median(r['seconds']):.1f}",
                f"{r.get('first_call_s', float('nan')):.1f}",
                f"{r['peak_rss_gb']:.1f}",
                f"{r['final_rss_gb']:.1f}",
                f"{r['activations_gb']:.1f}" if "activations_gb" in r else "",
            ]
        )
    print("\n## SDXL UNet, one step at 1024² (batch 1, 128×128 latents, fp32), one process each")
    print(f"machine: {machine()}")
    headers = [
        "framework",
        "step s",
        "first call s",
        "peak RSS GB",
        "RSS after step GB",
        "XLA temp buffers GB",
    ]
    print(table(headers, rows))
    print("peak RSS includes loading (safetensors pages mapped while converting)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per implementation (median)"
    )
    parser.add_argument("--attention", default="auto", help="mv2_jax attention implementation")
    parser.add_argument(
        "--diffusers-flax",
        action="store_true",
        help=f"also time diffusers {DIFFUSERS_FLAX}'s Flax UNet (pip-installs it "
        "into the benchmark cache, not into this environment)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-op breakdown")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.attention, args.repeats)))
    elif args.model == "sd15":
        sd15(args)
    else:
        sdxl(args)


if __name__ == "__main__":
    main()
