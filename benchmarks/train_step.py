"""One UNet training step on this machine: mv2_jax's train step vs the same step in diffusers +
PyTorch (same model and random weights, same inputs, same loss and AdamW).

The step: ε-prediction loss with Min-SNR-γ=5 weights on given latents, context, noise and
timesteps (drawn once in numpy, fed to both), backward, clip by global norm 1.0, AdamW
(lr 1e-5, wd 1e-2, eps 1e-8), EMA 0.9999 of the weights; fp32 on both (bf16 on a CPU is
emulated or falls off the fast kernels: it says nothing about accelerators). mv2_jax runs
`mv2_jax.training.step.make_train_step` jitted with the state donated; PyTorch runs
`torch.optim.AdamW` + `clip_grad_norm_`. Every (framework, remat) configuration runs in its
own process, so that its peak RSS is its own (one the OOM killer ends is reported as such).
The first PyTorch step's weights are saved and compared with mv2_jax's after its first step
(same start, same inputs: the same step).

    python benchmarks/train_step.py                    # tiny, then SD1.5 at 256²
    python benchmarks/train_step.py --only sd15 --steps 2 --sd15-size 512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # configs/
from common import (  # noqa: E402
    CACHE,
    machine,
    median,
    peak_rss_gb,
    rss_gb,
    run_spec_worker,
    table,
    timed,
)

LR, WEIGHT_DECAY, ADAM_EPS, CLIP_NORM, MIN_SNR_GAMMA, EMA_DECAY = 1e-5, 1e-2, 1e-8, 1.0, 5.0, 0.9999
REMATS = ("none", "full", "dots_no_batch")


def setup(name: str, sd15_size: int) -> dict:
    """Batch, latent size (pixels / 8) and context width of a benchmark configuration."""
    if name == "tiny":
        return dict(batch=8, latent=32 // 2, context_dim=32, pixels=32)  # its VAE: 2× down
    return dict(batch=1, latent=sd15_size // 8, context_dim=768, pixels=sd15_size)


def unet_folder(name: str) -> Path:
    """A diffusers UNet with random (default-init) weights, saved once: both frameworks load it."""
    if name == "sd15":
        from unet_step import reference_folder

        return reference_folder("sd15")
    folder = CACHE / "tiny_t2i_unet"
    if not (folder / "config.json").exists():
        import diffusers
        import torch

        from configs.t2i import tiny_model

        config = {k: v for k, v in tiny_model()["unet"].items() if not k.startswith("_")}
        torch.manual_seed(0)
        diffusers.UNet2DConditionModel(**config).save_pretrained(folder)
    return folder


def alphas_cumprod() -> np.ndarray:
    """ᾱ of SD's training schedule (scaled-linear betas, 1000 steps), float32."""
    from configs.t2i import tiny_model
    from mv2_jax.diffusion.schedulers.base import make_scheduler

    return make_scheduler(tiny_model()["scheduler"], "ddpm").train_alphas_cumprod()


def inputs(name: str, sd15_size: int) -> dict:
    """The step's inputs of a benchmark configuration (`step_inputs`)."""
    s = setup(name, sd15_size)
    return step_inputs(s["batch"], (s["latent"], s["latent"]), s["context_dim"])


def step_inputs(batch: int, latent_shape: tuple[int, ...], context_dim: int) -> dict:
    """A step's inputs, channels-last, drawn in numpy from seed 0: latents / noise
    `[B, *latent_shape, 4]` (`latent_shape` `(h, w)` or `(F, h, w)`), context `[B,77,D]`,
    timesteps `[B]` int32."""
    rng = np.random.default_rng(0)
    shape = (batch, *latent_shape, 4)
    return dict(
        latents=rng.standard_normal(shape, np.float32),
        noise=rng.standard_normal(shape, np.float32),
        context=rng.standard_normal((batch, 77, context_dim), np.float32),
        timesteps=rng.integers(0, 1000, (batch,)).astype(np.int32),
    )


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have been busy, of which this process) since boot."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy / tick, (int(mine[11]) + int(mine[12])) / tick  # utime, stime


def timed_quietly(fn, steps: int, max_foreign: float = 0.1) -> tuple[list[float], list[float]]:
    """`steps` timings of `fn` during which other processes used at most `max_foreign` of the
    machine's cores (the sandbox is shared; with 2 cores, someone else's job can slow a
    thread-synchronising step several-fold). Gives up after 3 × `steps` tries and keeps the
    quietest. Returns (seconds, others' share of the cores) of the kept steps."""
    tries = []
    while len(tries) < 3 * steps:
        busy0, mine0 = _busy_seconds()
        seconds = timed(fn)
        busy1, mine1 = _busy_seconds()
        foreign = max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (seconds * os.cpu_count())
        tries.append((foreign, seconds))
        if sum(f <= max_foreign for f, _ in tries) >= steps:
            break
    kept = sorted(tries)[:steps]
    return [t for _, t in kept], [f for f, _ in kept]


# ---- mv2_jax


def jax_loss(unet):
    """The trainer's ε loss (`mv2_jax.training.losses`, as in `t2i.py`) on given noise and
    timesteps instead of ones drawn from the example keys."""
    from mv2_jax.training import losses

    def loss_fn(params, consts, batch, keys):
        del keys
        ac, t = consts["alphas_cumprod"], batch["timesteps"]
        noisy, target = losses.noisy_and_target(batch["latents"], batch["noise"], t, ac, "epsilon")
        prediction = unet.apply({"params": params}, noisy, t, batch["context"])
        weights = losses.min_snr_weights(ac, t, MIN_SNR_GAMMA, "epsilon")
        return losses.weighted_mse(prediction, target, weights), {}

    return loss_fn


def jax_worker(spec: dict) -> dict:
    import mv2_jax
    from mv2_jax.training.optim import trainable_paths

    folder = unet_folder(spec["config"])
    unet, params = mv2_jax.load_component(folder)
    unet = unet.clone(remat_policy=spec["remat"])
    check = None
    if spec.get("check"):
        check = lambda state: compare(state.params, folder, Path(spec["check"]))  # noqa: E731
    paths = trainable_paths(params, ("*",))
    batch = inputs(spec["config"], spec["sd15_size"])
    return measure_jax_step(jax_loss(unet), params, paths, batch, spec["steps"], check)


def measure_jax_step(
    loss_fn,
    params,
    paths,
    batch: dict,
    steps: int,
    after_first=None,
    *,
    consts: dict | None = None,
    ema_decay: float = EMA_DECAY,
) -> dict:
    """The trainer's step (`make_train_step`: AdamW and EMA on the params at `paths`, the rest
    frozen) on `batch` (numpy, `step_inputs`), jitted with the state donated: compile seconds,
    the compiled program's memory (`memory_analysis`), the first step (its loss and grad norm,
    then `after_first(state)`'s entries), `steps` quiet steps and the peak RSS. What is known
    after compiling is printed as a JSON line at once, so a run the OOM killer ends still
    reports it. `consts` (default: SD's ᾱ alone) are the loss's frozen arrays."""
    import jax
    import jax.numpy as jnp

    from mv2_jax.training.state import create_state
    from mv2_jax.training.step import make_train_step

    optimizer = benchmark_optimizer()
    state = create_state(params, optimizer, paths, seed=0)
    del params  # the state holds them; donated at the first step
    if consts is None:
        consts = {"alphas_cumprod": jnp.asarray(alphas_cumprod())}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    step = jax.jit(
        make_train_step(loss_fn, optimizer, paths, ema_decay=ema_decay), donate_argnums=(0,)
    )
    state_gb = rss_gb()
    compiled = None

    def compile_step():
        nonlocal compiled
        compiled = step.lower(state, consts, batch).compile()

    compile_s = timed(compile_step)
    memory = compiled.memory_analysis()
    result = dict(
        compile_s=compile_s,
        state_rss_gb=state_gb,
        argument_gb=memory.argument_size_in_bytes / 2**30,
        temp_gb=memory.temp_size_in_bytes / 2**30,
        xla_total_gb=(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )
        / 2**30,
    )
    print(json.dumps(result), flush=True)
    metrics = {}

    def one_step():
        nonlocal state, metrics
        state, metrics = compiled(state, consts, batch)
        jax.block_until_ready(metrics)

    result["first_step_s"] = timed(one_step)
    result.update({k: float(v) for k, v in metrics.items()})  # loss, grad norm at the start
    if after_first is not None:
        result.update(after_first(state))
    result["seconds"], result["foreign_load"] = timed_quietly(one_step, steps)
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def benchmark_optimizer():
    """The trainer's optimizer (`make_optimizer`) with this benchmark's settings."""
    from mv2_jax.training.optim import make_optimizer

    return make_optimizer(
        SimpleNamespace(
            lr=LR, lr_schedule="constant", warmup_steps=0, total_steps=1, lr_end_factor=0.0,
            adam_b1=0.9, adam_b2=0.999, adam_eps=ADAM_EPS, weight_decay=WEIGHT_DECAY,
            grad_clip_norm=CLIP_NORM,
        )
    )  # fmt: skip


def compare(params, start_folder: Path, torch_folder: Path) -> dict:
    """mv2_jax's weights after one step against PyTorch's (saved by its worker), tensor by
    tensor so that one converted tensor at a time is in memory: max |difference|, how many
    elements differ by more than lr/10, and the largest change the step made (Adam's first
    update is ≈ lr·sign(g) + lr·wd·w, so differences are to be read against lr)."""
    from flax import traverse_util

    from mv2_jax.weights.load import build_module, read_config
    from mv2_jax.weights.mapping import convert_state_dict
    from mv2_jax.weights.safetensors_io import read_weights_folder

    _, family = build_module(read_config(start_folder))
    flat = traverse_util.flatten_dict(params)

    def over(folder: Path, stat) -> list:
        state = read_weights_folder(folder, family.weights_stem)
        place = lambda path, value: stat(np.asarray(flat[path]), value)  # noqa: E731
        converted = convert_state_dict(state, params, family.rules, place=place)
        return list(traverse_util.flatten_dict(converted).values())

    diffs = over(torch_folder, lambda a, b: (np.abs(a - b).max(), (np.abs(a - b) > LR / 10).sum()))
    updates = over(start_folder, lambda a, b: np.abs(a - b).max())
    return dict(
        max_abs_diff=float(max(d for d, _ in diffs)),
        elements_over_lr_10=int(sum(n for _, n in diffs)),
        elements=int(sum(v.size for v in flat.values())),
        max_update=float(max(updates)),
    )


# ---- PyTorch


def torch_worker(spec: dict) -> dict:
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(unet_folder(spec["config"])).train()
    if spec["remat"] != "none":
        unet.enable_gradient_checkpointing()
    save = None
    if spec.get("save"):
        save = lambda: unet.save_pretrained(spec["save"], max_shard_size="500MB")  # noqa: E731
    x = inputs(spec["config"], spec["sd15_size"])
    return measure_torch_step(unet, list(unet.parameters()), x, spec["steps"], save)


def measure_torch_step(
    unet,
    params: list,
    x: dict,
    steps: int,
    after_first=None,
    *,
    loss_fn=None,
    ema_decay: float = EMA_DECAY,
) -> dict:
    """The same step in PyTorch on `unet` (a diffusers UNet in train mode; `params` the ones
    that train, their AdamW, clipping and, with `ema_decay` > 0, EMA) and `x` (`step_inputs`,
    channels-last; `torch_inputs` moves the channels to axis 1 as diffusers reads them): the
    first step (loss, grad norm; then `after_first()`), `steps` quiet steps, the peak RSS.
    `loss_fn(tensors) → loss` (default `min_snr_loss(unet)`) is the step's loss."""
    import torch

    optimizer = torch.optim.AdamW(
        params, lr=LR, betas=(0.9, 0.999), eps=ADAM_EPS, weight_decay=WEIGHT_DECAY
    )
    ema = [p.detach().clone() for p in params] if ema_decay else []
    tensors = torch_inputs(x)
    loss_fn = loss_fn or min_snr_loss(unet)
    state_gb = rss_gb()
    metrics = {}

    def one_step():
        loss = loss_fn(tensors)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1.0 - ema_decay)
        metrics.update(loss=loss.item(), grad_norm=grad_norm.item())

    first_s = timed(one_step)
    result = dict(first_step_s=first_s, state_rss_gb=state_gb, **metrics)
    if after_first is not None:
        after_first()
    result["seconds"], result["foreign_load"] = timed_quietly(one_step, steps)
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def torch_inputs(x: dict) -> dict:
    """`step_inputs`-like numpy arrays as torch tensors: images and videos (ndim ≥ 4) with the
    channels moved to axis 1, `timesteps` as int64, the rest as they are."""
    import torch

    out = {k: torch.from_numpy(v) for k, v in x.items()}
    for k, v in out.items():
        if v.ndim >= 4:
            out[k] = v.movedim(-1, 1).contiguous()
    if "timesteps" in out:
        out["timesteps"] = out["timesteps"].long()
    return out


def noised(latents, noise, timesteps):
    """`x_t = √ᾱ·x₀ + √(1−ᾱ)·ε` in torch (diffusers' `DDPMScheduler.add_noise` with SD's ᾱ)."""
    import torch

    ac = torch.from_numpy(alphas_cumprod())[timesteps].view(-1, *[1] * (latents.ndim - 1))
    return ac.sqrt() * latents + (1.0 - ac).sqrt() * noise


def min_snr_loss(unet):
    """This benchmark's loss in torch: ε MSE with Min-SNR-γ weights (`jax_loss`'s)."""
    import torch

    ac = torch.from_numpy(alphas_cumprod())

    def loss_fn(x):
        t = x["timesteps"]
        prediction = unet(noised(x["latents"], x["noise"], t), t, x["context"]).sample
        snr = ac[t] / (1.0 - ac[t])
        weights = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        return (weights * (prediction - x["noise"]).square().flatten(1).mean(1)).mean()

    return loss_fn


# ---- driver


def in_subprocess(spec: dict) -> dict:
    return run_spec_worker(__file__, spec, f"{spec['kind']} remat={spec['remat']}")


def benchmark(name: str, args) -> tuple[list[list], list]:
    """Table rows of one configuration and its agreement check."""
    s = setup(name, args.sd15_size)
    steps = args.steps or (10 if name == "tiny" else 3)
    base = dict(config=name, sd15_size=args.sd15_size, steps=steps)
    check_dir = CACHE / f"train_step_{name}_torch_after_one_step"
    shutil.rmtree(check_dir, ignore_errors=True)
    unet_folder(name)  # created once, outside the timed processes
    runs = {
        ("torch", "none"): in_subprocess(
            dict(base, kind="torch", remat="none", save=str(check_dir))
        )
    }
    for remat in REMATS:
        check = str(check_dir) if remat == "none" else ""
        runs["jax", remat] = in_subprocess(dict(base, kind="jax", remat=remat, check=check))
    runs["torch", "checkpointing"] = in_subprocess(dict(base, kind="torch", remat="checkpointing"))
    shutil.rmtree(check_dir, ignore_errors=True)

    label = f"{name} UNet, {s['latent']}² latents ({s['pixels']}² px)"
    rows = []
    for (framework, remat), r in runs.items():
        jax_run = framework == "jax"
        who = "mv2_jax" if jax_run else "PyTorch"
        if r.get("killed"):
            rows.append(
                [label, s["batch"], "fp32", who, remat, "", "out of memory", "", "", "", ""]
            )
            continue
        t = median(r["seconds"])
        reference = runs["torch", "none" if remat == "none" else "checkpointing"]
        ratio = "" if reference.get("killed") else f"{t / median(reference['seconds']):.2f}"
        rows.append([
            label, s["batch"], "fp32", who, remat,
            f"{r['compile_s']:.1f}" if jax_run else "— (eager)",
            f"{t:.3g}", ratio, f"{r['peak_rss_gb']:.2f}",
            f"{r['temp_gb']:.3g}" if jax_run else "", f"{100 * max(r['foreign_load']):.0f}%",
        ])  # fmt: skip
    j, t = runs["jax", "none"], runs["torch", "none"]
    if j.get("killed") or t.get("killed"):
        return rows, [label] + [""] * 8
    check = [
        label, f"{j['loss']:.6g}", f"{t['loss']:.6g}", f"{abs(j['loss'] / t['loss'] - 1):.1e}",
        f"{j['grad_norm']:.6g}", f"{t['grad_norm']:.6g}", f"{j['max_abs_diff']:.2e}",
        f"{j['max_update']:.2e}", f"{j['elements_over_lr_10']} / {j['elements']}",
    ]  # fmt: skip
    print(f"all runs: {json.dumps({f'{k[0]} {k[1]}': v for k, v in runs.items()})}")
    return rows, check


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("tiny", "sd15"), help="one configuration (default both)")
    parser.add_argument(
        "--steps", type=int, help="timed steps per run, median (default 10 tiny, 3 SD1.5)"
    )
    parser.add_argument(
        "--sd15-size", type=int, default=256, help="SD1.5 image side in pixels (latents: / 8)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = jax_worker(spec) if spec["kind"] == "jax" else torch_worker(spec)
        print(json.dumps(result))
        return
    rows, checks = [], []
    for name in [args.only] if args.only else ["tiny", "sd15"]:
        r, c = benchmark(name, args)
        rows += r
        checks.append(c)
    print("\n## UNet training step (ε loss, min-SNR γ=5, clip 1.0, AdamW, EMA), one process each")
    print(f"machine: {machine()}")
    headers = [
        "config", "batch", "dtype", "framework", "remat", "compile s", "step s (median)",
        "ratio jax/torch", "peak RSS GB", "XLA temp GB", "others' CPU (max)",
    ]  # fmt: skip
    print(table(headers, rows))
    print("\nsame step: one step from the same weights and inputs")
    headers = [
        "config", "loss mv2_jax", "loss PyTorch", "rel. diff", "grad norm mv2_jax",
        "grad norm PyTorch", "max |Δw| after step", "max |update|", "elements |Δw| > lr/10",
    ]  # fmt: skip
    print(table(headers, checks))


if __name__ == "__main__":
    main()
