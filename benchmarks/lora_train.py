"""LoRA training against full fine-tuning (issue 19): peak memory and step time of one training
step of the SD1.5 UNet and of the motion UNet (SD1.5 + AnimateDiff-size motion modules), in
mv2_jax and in diffusers + peft + PyTorch, each configuration in its own process.

The step is `train_step.py`'s (ε loss with Min-SNR-γ=5, clip 1.0, AdamW, EMA; fp32 compute,
batch 1, same random weights and inputs on both sides). What trains:

- `full`: SD1.5, every param; the motion UNet, its motion modules in full (what the i2v stage
  trains, `configs/i2v.py` `TRAINABLE`: the whole motion UNet's state would not fit here);
- `lora`: rank 64, alpha 64, on the stage's default targets (`configs/t2i.py` / `configs/i2v.py`
  `LORA_TARGETS`: every attention projection of SD1.5; the motion modules' attention
  projections), driven by the trainer's `LoraStage` loss (the factors fused into the kernels
  inside the step) and trainable subset, the base fp32;
- `lora_bf16`: the same with the frozen base stored in bf16 (`lora.base_dtype`), computed in fp32.

PyTorch runs diffusers' UNet with the same step; LoRA through peft (`inject_adapter_in_model`,
the base frozen, AdamW on the LoRA params only), full as above (`freeze_unet2d_params` for the
motion UNet). Per run: peak RSS (VmHWM, loading included), mv2_jax's compiled step's argument
and temp bytes (`memory_analysis`), compile seconds, the median of `--steps` quiet steps. A run
the OOM killer ends is a row that says so.

    python benchmarks/lora_train.py                          # SD1.5 256², motion UNet 128² × 4
    python benchmarks/lora_train.py --only tiny tiny_motion  # a smoke test (tiny UNets)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # configs/
from common import CACHE, machine, median, run_spec_worker, table  # noqa: E402
from train_step import (  # noqa: E402
    jax_loss,
    measure_jax_step,
    measure_torch_step,
    step_inputs,
    unet_folder,
)

from configs import i2v, t2i  # noqa: E402

RANK = 64
MODES = ("full", "lora", "lora_bf16")
RUNS = [("jax", mode) for mode in MODES] + [("torch", "full"), ("torch", "lora")]
TORCH_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # peft: module names' last parts
TORCH_MOTION = r".*motion_modules\.\d+\..*\.(to_q|to_k|to_v|to_out\.0)"  # peft: a full match


def _unprefixed(patterns) -> tuple[str, ...]:
    """The i2v stage's globs (over `unet/…`) as globs over the motion UNet's own params."""
    return tuple(p.removeprefix("unet/") for p in patterns if p.startswith("unet/"))


def sd15_folder() -> Path:
    from unet_step import reference_folder

    return reference_folder("sd15")


def motion_folder() -> Path:
    from i2v_step import FOLDER, prepare

    prepare()
    return FOLDER


def tiny_motion_folder() -> Path:
    """configs/i2v.py:tiny's motion UNet with random weights, saved once."""
    folder = CACHE / "tiny_i2v_unet"
    if not (folder / "config.json").exists():
        import diffusers
        import torch

        config = {k: v for k, v in i2v.tiny_model()["unet"].items() if not k.startswith("_")}
        torch.manual_seed(0)
        diffusers.UNetMotionModel(**config).save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class Model:
    folder: Callable[[], Path]
    video: bool
    full: tuple[str, ...]  # what full fine-tuning trains (globs over param names)
    lora: tuple[str, ...]  # the LoRA's targets (globs over module paths)
    torch_lora: list[str] | str  # the same targets as peft's `target_modules`


SD15_LIKE = dict(video=False, full=("*",), lora=t2i.LORA_TARGETS, torch_lora=TORCH_ATTENTION)
MOTION_LIKE = dict(
    video=True,
    full=_unprefixed(i2v.TRAINABLE),
    lora=_unprefixed(i2v.LORA_TARGETS),
    torch_lora=TORCH_MOTION,
)
MODELS = {
    "sd15": Model(sd15_folder, **SD15_LIKE),
    "motion": Model(motion_folder, **MOTION_LIKE),
    "tiny": Model(lambda: unet_folder("tiny"), **SD15_LIKE),
    "tiny_motion": Model(tiny_motion_folder, **MOTION_LIKE),
}


def model_inputs(spec: dict) -> dict:
    """Batch 1: latents `[1, h, w, 4]`, or `[1, F, h, w, 4]` for a motion UNet (h = size / 8)."""
    model, h = MODELS[spec["model"]], spec["size"] // 8
    config = json.loads((model.folder() / "config.json").read_text())
    shape = (spec["frames"], h, h) if model.video else (h, h)
    return step_inputs(1, shape, config["cross_attention_dim"])


# ---- workers


def jax_worker(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import mv2_jax
    from mv2_jax.lora.leaves import init_lora_leaves, lora_targets
    from mv2_jax.training.lora import TRAINABLE, LoraSettings, LoraStage
    from mv2_jax.training.optim import merge_params, split_params, trainable_paths

    model = MODELS[spec["model"]]
    base_dtype = "bfloat16" if spec["mode"] == "lora_bf16" else "float32"
    unet, params = mv2_jax.load_component(model.folder(), jnp.float32, param_dtype=base_dtype)
    loss, adapted = jax_loss(unet), 0
    if spec["mode"] == "full":
        paths = trainable_paths(params, model.full)
    else:
        targets = lora_targets(params, model.lora)
        settings = LoraSettings(RANK, float(RANK), model.lora, base_dtype)
        # the trainer's LoRA loss around the benchmark's ε loss (which needs no stage consts)
        stage = LoraStage(
            inner=SimpleNamespace(loss=loss), settings=settings, targets=targets, seed=0
        )
        loss = stage.loss
        params = merge_params(init_lora_leaves(targets, RANK, jax.random.key(0)), params)
        paths, adapted = trainable_paths(params, TRAINABLE), len(targets)
    trained = sum(v.size for v in jax.tree.leaves(split_params(params, paths)[0]))
    info = dict(trained_params=int(trained), adapted_modules=adapted)
    return {**info, **measure_jax_step(loss, params, paths, model_inputs(spec), spec["steps"])}


def torch_worker(spec: dict) -> dict:
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    model = MODELS[spec["model"]]
    cls = diffusers.UNetMotionModel if model.video else diffusers.UNet2DConditionModel
    unet = cls.from_pretrained(model.folder()).train()
    adapted = 0
    if spec["mode"] == "full" and model.video:
        unet.freeze_unet2d_params()  # the motion modules train
    elif spec["mode"] == "lora":
        unet.requires_grad_(False)
        config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=model.torch_lora)
        inject_adapter_in_model(config, unet)
        adapted = sum(isinstance(m, LoraLayer) for m in unet.modules())
    params = [p for p in unet.parameters() if p.requires_grad]
    info = dict(trained_params=sum(p.numel() for p in params), adapted_modules=adapted)
    x = model_inputs(spec)
    if model.video:  # diffusers' motion UNet reads one context per frame
        x["context"] = np.repeat(x["context"], spec["frames"], axis=0)
    return {**info, **measure_torch_step(unet, params, x, spec["steps"])}


# ---- driver


def label(name: str, args) -> str:
    if MODELS[name].video:
        return f"{name} ({args.motion_size}² × {args.frames} frames)"
    return f"{name} ({args.size}²)"


def rows_of(name: str, runs: dict, args) -> list[list]:
    rows = []
    for (framework, mode), r in runs.items():
        jax_run = framework == "jax"
        who = "mv2_jax" if jax_run else "PyTorch"
        full = runs.get((framework, "full"), {})
        reference = runs.get(("torch", "full" if mode == "full" else "lora"), {})
        if r.get("killed"):
            xla = [f"{r[k]:.2f}" if k in r else "" for k in ("argument_gb", "temp_gb")]
            rows.append([label(name, args), mode, who, "", "", "", "out of memory (killed)",
                         "", "", "", *xla, "", ""])  # fmt: skip
            continue
        t = median(r["seconds"])
        ratio = ""
        if jax_run and "seconds" in reference:
            ratio = f"{t / median(reference['seconds']):.2f}"
        share = (
            f"{100 * r['peak_rss_gb'] / full['peak_rss_gb']:.0f}%" if "peak_rss_gb" in full else ""
        )
        rows.append([
            label(name, args), mode, who,
            f"{r['trained_params'] / 1e6:.1f}", r["adapted_modules"] or "",
            f"{r['compile_s']:.0f}" if jax_run else "— (eager)", f"{t:.3g}", ratio,
            f"{r['peak_rss_gb']:.2f}", share,
            f"{r['argument_gb']:.2f}" if jax_run else "", f"{r['temp_gb']:.2f}" if jax_run else "",
            f"{r['loss']:.6g}", f"{100 * max(r['foreign_load']):.0f}%",
        ])  # fmt: skip
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=["sd15", "motion"])
    parser.add_argument(
        "--runs", nargs="+", choices=[f"{f}:{m}" for f, m in RUNS], help="some runs (default all)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (median)")
    parser.add_argument("--size", type=int, default=256, help="SD1.5 image side in pixels")
    parser.add_argument("--motion-size", type=int, default=128, help="motion UNet frame side")
    parser.add_argument("--frames", type=int, default=4, help="motion UNet frames")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps((jax_worker if spec["framework"] == "jax" else torch_worker)(spec)))
        return
    rows, everything = [], {}
    for name in args.only:
        MODELS[name].folder()  # made once, outside the measured processes
        video = MODELS[name].video
        size = args.motion_size if video else args.size
        runs = {}
        for framework, mode in RUNS:
            if args.runs and f"{framework}:{mode}" not in args.runs:
                continue
            spec = dict(framework=framework, mode=mode, model=name, size=size,
                        frames=args.frames, steps=args.steps)  # fmt: skip
            runs[framework, mode] = run_spec_worker(__file__, spec, f"{name} {framework} {mode}")
        rows += rows_of(name, runs, args)
        everything.update({f"{name} {k[0]} {k[1]}": v for k, v in runs.items()})
    print(f"all runs: {json.dumps(everything)}")
    print(f"\n## LoRA training vs full fine-tuning (rank {RANK}, batch 1, fp32 compute)")
    print(f"machine: {machine()}")
    headers = [
        "model (px)", "trains", "framework", "trained params M", "LoRA modules", "compile s",
        "step s (median)", "ratio jax/torch", "peak RSS GB", "% of full's peak",
        "XLA args GB", "XLA temp GB", "loss at start", "others' CPU (max)",
    ]  # fmt: skip
    print(table(headers, rows))


if __name__ == "__main__":
    main()
