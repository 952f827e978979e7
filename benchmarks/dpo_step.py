"""A Diffusion-DPO training step against a plain training step of the same UNet and batch
(issue 21), full fine-tuning and LoRA, in mv2_jax and in PyTorch: step time and peak memory,
each configuration in its own process (so that its peak is its own).

The steps, on `--pairs` pairs of random latents (chosen, rejected), one prompt embedding each:

- `plain`: the stage's ordinary denoising loss (ε MSE, no min-SNR weights: the DPO config's
  diffusion settings) on the chosen sample of every pair — B examples;
- `plain_pairs`: the same on both samples of every pair as ordinary examples — 2B examples,
  the other reading of "the same batch";
- `dpo`: eq. 14 (β = 5000, configs/dpo.py): the policy on chosen + rejected (2B, one noise and
  timestep per pair), the frozen reference forward on the same 2B without gradients.

mv2_jax runs the trainer's own stages (`TextToImageStage` on precomputed latents and
embeddings, `LoraStage`, `PreferenceStage`: for full fine-tuning the reference is a copy of the
params in the consts, for LoRA the same params with the adapter off) through `make_train_step`,
jitted with the state donated, as `train.py` runs them. PyTorch runs diffusers'
UNet2DConditionModel in the form of diffusers' research script
(examples/research_projects/diffusion_dpo/train_diffusion_dpo.py, written here from its
description): the policy on the concatenated chosen + rejected latents with shared noise and
timesteps, then the reference under `no_grad` — for LoRA (`unet.add_adapter`, peft) the same
UNet with `disable_adapters()`, for full fine-tuning (which that script lacks) a frozen copy as
in the authors' original script — and −log σ(β/2 · (Δref − Δpolicy)). Both sides: AdamW, clip
1.0, no EMA (configs/dpo.py sets `ema_decay` = 0; mv2_jax's train state still holds its EMA
tree, one copy of what trains), fp32, the same random weights; LoRA rank 8 (configs/dpo.py's
shapes variants) on every attention projection (`configs/t2i.py` `LORA_TARGETS`).

Model: `sd15_half` is SD1.5's UNet layout (4 levels, 2 layers per block, 8 heads, 768-wide
cross-attention) at half its width (block channels 160/320/640/640: 219.8 M params, a quarter
of SD1.5's), at 128² px (16² latents), 1 pair. Why not SD1.5 itself: full DPO holds the params,
their gradients, two Adam moments (and mv2_jax's EMA tree) and the reference copy, 5–6 × 3.4 GB
before any activation, and this shared 24 GiB machine gives a benchmark process ~9 GB; the
half-width model needs 5–6 × 0.82 GB. `--smoke` runs configs/t2i.py's tiny UNet at 8² latents
(seconds; tests/test_benchmark_dpo_step.py runs it).

Per run: peak RSS (VmHWM, loading included), mv2_jax's compiled step's argument and temp bytes
(`memory_analysis`), compile seconds, the median of `--steps` quiet steps; the DPO/plain time
ratio within each framework, the LoRA-DPO / full-DPO peak-memory share, mv2_jax / PyTorch time.
The loss at the start of a DPO run is log 2 on both sides (policy = reference at step 0); the
plain losses differ between frameworks (each draws its own noise and timesteps).

    python benchmarks/dpo_step.py              # sd15_half, 128², 1 pair
    python benchmarks/dpo_step.py --smoke      # the tiny UNet, a few seconds a run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # configs/
from common import CACHE, machine, median, run_spec_worker, table  # noqa: E402
from lora_train import TORCH_ATTENTION  # noqa: E402
from train_step import (  # noqa: E402
    alphas_cumprod,
    measure_jax_step,
    measure_torch_step,
    noised,
    step_inputs,
    unet_folder,
)

from configs import dpo, t2i  # noqa: E402

RANK = 8
TRAINS = ("full", "lora")
MODES = ("plain", "plain_pairs", "dpo")
RUNS = [(f, t, m) for t in TRAINS for m in MODES for f in ("jax", "torch")]
SD15_HALF = dict(cross_attention_dim=768, block_out_channels=[160, 320, 640, 640])


def sd15_half_folder() -> Path:
    """SD1.5's UNet at half width, random (default-init) weights, saved once."""
    folder = CACHE / "sd15_half_unet"
    if not (folder / "config.json").exists():
        import diffusers
        import torch

        torch.manual_seed(0)
        diffusers.UNet2DConditionModel(**SD15_HALF).save_pretrained(folder)
    return folder


MODELS = {"sd15_half": sd15_half_folder, "tiny": lambda: unet_folder("tiny")}


def dpo_config():
    """configs/dpo.py's SD1.5 run: its β and its diffusion settings (no min-SNR weights, no
    caption dropout), checked by the stage."""
    from mv2_jax.training.dpo import dpo_settings

    config = dpo.get_config("sd15")
    return config, dpo_settings(config)


def pair_inputs(spec: dict) -> dict:
    """`--pairs` pairs, channels-last, seed 0: `latents` (the chosen) `[B,h,h,4]`, `rejected`,
    the pair's `noise`, `context` `[B,77,D]`, `timesteps` `[B]`."""
    config = json.loads((MODELS[spec["model"]]() / "config.json").read_text())
    h, d = spec["latent"], config["cross_attention_dim"]
    x = step_inputs(spec["pairs"], (h, h), d)
    x["rejected"] = np.random.default_rng(1).standard_normal(x["latents"].shape, np.float32)
    return x


# ---- workers


def jax_worker(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import mv2_jax
    from mv2_jax.lora.leaves import init_lora_leaves, lora_targets
    from mv2_jax.training.dpo import PreferenceStage
    from mv2_jax.training.lora import TRAINABLE, LoraSettings, LoraStage
    from mv2_jax.training.optim import merge_params, split_params, trainable_paths
    from mv2_jax.training.t2i import TextToImageStage

    config, settings = dpo_config()
    folder = MODELS[spec["model"]]()
    unet, params = mv2_jax.load_component(folder, jnp.float32)
    x = pair_inputs(spec)
    # the t2i stage on precomputed latents and embeddings: no VAE or text encoder runs
    consts = {
        "alphas_cumprod": jnp.asarray(alphas_cumprod()),
        "empty_context": jnp.zeros((1, *x["context"].shape[1:]), jnp.float32),
    }
    model = TextToImageStage(
        param_dtype=jnp.float32, seed=0, consts=consts, vae=None, text_encoders=(),
        tokenizers=(), prediction_type="epsilon", diffusion=config.diffusion, sdxl=False,
        denoiser=unet, unet_folder=folder,
    )  # fmt: skip
    stage, adapted = model, 0
    if spec["trains"] == "lora":
        targets = lora_targets(params, t2i.LORA_TARGETS)
        lora = LoraSettings(RANK, float(RANK), t2i.LORA_TARGETS, "float32")
        stage = LoraStage(inner=model, settings=lora, targets=targets, seed=0)
        params = merge_params(init_lora_leaves(targets, RANK, jax.random.key(0)), params)
        paths, adapted = trainable_paths(params, TRAINABLE), len(targets)
    else:
        paths = trainable_paths(params, ("*",))
    if spec["mode"] == "dpo":
        stage = PreferenceStage(
            inner=stage, model=model, appearance_folder=None, settings=settings, consts=dict(consts)
        )
        if spec["trains"] == "full":  # the reference: a copy (the state's params are donated)
            stage.consts["reference"] = jax.tree.map(jnp.copy, split_params(params, paths)[0])
        batch = dict(chosen_latents=x["latents"], rejected_latents=x["rejected"],
                     context=x["context"], weight=np.ones(spec["pairs"], np.float32))  # fmt: skip
    elif spec["mode"] == "plain_pairs":
        both = np.concatenate([x["latents"], x["rejected"]])
        batch = dict(latents=both, context=np.concatenate([x["context"]] * 2))
    else:
        batch = dict(latents=x["latents"], context=x["context"])
    trained = sum(v.size for v in jax.tree.leaves(split_params(params, paths)[0]))
    info = dict(trained_params=int(trained), adapted_modules=adapted)
    step = measure_jax_step(
        stage.loss, params, paths, batch, spec["steps"], consts=stage.consts, ema_decay=0.0
    )
    return {**info, **step}


def torch_worker(spec: dict) -> dict:
    import diffusers
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    _, settings = dpo_config()
    unet = diffusers.UNet2DConditionModel.from_pretrained(MODELS[spec["model"]]()).train()
    adapted = 0
    if spec["trains"] == "lora":  # as the research script: the base frozen, peft adapters
        unet.requires_grad_(False)
        config = LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                            target_modules=TORCH_ATTENTION)  # fmt: skip
        unet.add_adapter(config)
        adapted = sum(name.endswith(".lora_A.default") for name, _ in unet.named_modules())
    params = [p for p in unet.parameters() if p.requires_grad]
    reference = None
    if spec["mode"] == "dpo" and spec["trains"] == "full":
        reference = copy.deepcopy(unet).requires_grad_(False).eval()

    def plain_loss(x):
        t = x["timesteps"]
        prediction = unet(noised(x["latents"], x["noise"], t), t, x["context"]).sample
        return F.mse_loss(prediction, x["noise"])

    def twice(x):  # both samples of every pair: chosen first; one noise, timestep, prompt
        shared = {k: x[k].repeat(2, *[1] * (x[k].ndim - 1)) for k in ("noise", "timesteps")}
        shared["context"] = x["context"].repeat(2, 1, 1)
        return {"latents": torch.cat([x["latents"], x["rejected"]]), **shared}

    def plain_pairs_loss(x):
        return plain_loss(twice(x))

    def dpo_loss(x):
        x = twice(x)
        latents, noise, t, context = (x[k] for k in ("latents", "noise", "timesteps", "context"))
        noisy = noised(latents, noise, t)

        def errors(prediction):  # per-example mean of the squared error, [2B]
            return (prediction.float() - noise).square().mean(dim=list(range(1, noise.ndim)))

        policy_w, policy_l = errors(unet(noisy, t, context).sample).chunk(2)
        lora = reference is None
        if lora:  # the reference: the base, adapters off
            unet.disable_adapters()
        with torch.no_grad():
            ref_w, ref_l = errors((unet if lora else reference)(noisy, t, context).sample).chunk(2)
        if lora:
            unet.enable_adapters()
        logits = (ref_w - ref_l) - (policy_w - policy_l)
        return -F.logsigmoid(0.5 * settings.beta * logits).mean()

    loss_fn = {"plain": plain_loss, "plain_pairs": plain_pairs_loss, "dpo": dpo_loss}[spec["mode"]]
    info = dict(trained_params=sum(p.numel() for p in params), adapted_modules=adapted)
    step = measure_torch_step(
        unet, params, pair_inputs(spec), spec["steps"], loss_fn=loss_fn, ema_decay=0.0
    )
    return {**info, **step}


# ---- driver


def rows_of(runs: dict) -> list[list]:
    rows = []
    for (framework, trains, mode), r in runs.items():
        jax_run, who = framework == "jax", "mv2_jax" if framework == "jax" else "PyTorch"
        if r.get("killed"):
            xla = [f"{r[k]:.2f}" if k in r else "" for k in ("argument_gb", "temp_gb")]
            rows.append([trains, mode, who, "", "", "", "out of memory (killed)", "", "", "",
                         "", *xla, "", ""])  # fmt: skip
            continue
        t = median(r["seconds"])
        plain = runs.get((framework, trains, "plain"), {})
        per_plain = f"{t / median(plain['seconds']):.2f}" if "seconds" in plain else ""
        torch_run = runs.get(("torch", trains, mode), {}) if jax_run else {}
        vs_torch = f"{t / median(torch_run['seconds']):.2f}" if "seconds" in torch_run else ""
        full = runs.get((framework, "full", mode), {})
        peak = full.get("peak_rss_gb")
        share = f"{100 * r['peak_rss_gb'] / peak:.0f}%" if peak else ""
        rows.append([
            trains, mode, who, f"{r['trained_params'] / 1e6:.2f}",
            f"{r['compile_s']:.0f}" if jax_run else "— (eager)", f"{t:.3g}", per_plain,
            vs_torch, f"{r['peak_rss_gb']:.2f}", share,
            f"{r['argument_gb']:.2f}" if jax_run else "", f"{r['temp_gb']:.2f}" if jax_run else "",
            f"{r['loss']:.6g}", f"{100 * max(r['foreign_load']):.0f}%",
        ])  # fmt: skip
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="the tiny UNet at 8² latents")
    parser.add_argument(
        "--runs", nargs="+", choices=[":".join(r) for r in RUNS], help="some runs (default all)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (median)")
    parser.add_argument("--pairs", type=int, default=1, help="preference pairs per batch")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latents /8)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps((jax_worker if spec["framework"] == "jax" else torch_worker)(spec)))
        return
    name, latent = ("tiny", 8) if args.smoke else ("sd15_half", args.size // 8)
    MODELS[name]()  # made once, outside the measured processes
    runs = {}
    for run in RUNS:
        if args.runs and ":".join(run) not in args.runs:
            continue
        framework, trains, mode = run
        spec = dict(framework=framework, trains=trains, mode=mode, model=name, latent=latent,
                    pairs=args.pairs, steps=args.steps)  # fmt: skip
        runs[run] = run_spec_worker(__file__, spec, f"{name} {framework} {trains} {mode}")
    print(f"all runs: {json.dumps({' '.join(k): v for k, v in runs.items()})}")
    print(
        f"\n## Diffusion-DPO step vs plain step ({name}, {latent}² latents, {args.pairs} "
        f"pair(s), fp32, LoRA rank {RANK}; a DPO run's loss at start: log 2 = {math.log(2):.6g})"
    )
    print(f"machine: {machine()}")
    headers = [
        "trains", "step", "framework", "trained params M", "compile s", "step s (median)",
        "× plain", "mv2_jax / PyTorch", "peak RSS GB", "% of full's peak", "XLA args GB",
        "XLA temp GB", "loss at start", "others' CPU (max)",
    ]  # fmt: skip
    print(table(headers, rows_of(runs)))


if __name__ == "__main__":
    main()
