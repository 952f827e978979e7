"""One classifier-free-guidance UNet step on an accelerator: mv2_jax (bf16, jit) against
diffusers (bf16 and fp16 eager, bf16 `torch.compile`) on the same card, with the same weights.

Models (configs from unet_step.py and i2v_step.py; random diffusers default-init weights, built
on the card by diffusers and handed to mv2_jax through the same key mapping `load_component`
uses, so both compute the same function and their outputs are compared):

  sd15    SD1.5 UNet, 512² (64² latents), batch 2 (cond + uncond), 77 × 768 context
  sdxl    SDXL base UNet, 1024² (128² latents), batch 2, 77 × 2048 context + micro-conditioning
  motion  SD1.5 UNet + AnimateDiff motion modules (`MotionAdapter()`), 512² × 16 frames, batch 2

One model per process (`--model`), its results written to `--out` JSON after each measurement,
so that a process stopped at its time cap (benchmarks/accelerator_check.sh) leaves what it had;
`--table` reads those files and prints the markdown table. `--dry-run` runs the same code on
CPU with tiny configs (the tests' own) and `torch.compile(backend="eager")` (graph capture, no
code generation), in seconds.

    python benchmarks/accelerator_step.py --model sd15 --out out/sd15.json
    python benchmarks/accelerator_step.py --table out/sd15.json out/sdxl.json out/motion.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

# jax shares the card with torch here: it allocates as it goes instead of 75 % up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT))  # mv2_jax from the checkout (the GPU machines do not install it)
from common import median, table, timed  # noqa: E402
from i2v_step import compile_timed  # noqa: E402
from unet_step import SD15, SDXL  # noqa: E402

MODELS = ("sd15", "sdxl", "motion")
JAX_ROW = "mv2_jax bf16 jit"
BASELINE = "diffusers bf16 eager"


@dataclass(frozen=True)
class Setup:
    title: str
    unet: dict  # diffusers UNet2DConditionModel config
    latent: int  # latent height = width
    frames: int = 0  # 0: an image UNet; else a motion UNet over this many frames
    motion_adapter: dict = field(default_factory=dict)  # MotionAdapter config (frames > 0)


def setups(dry_run: bool) -> dict[str, Setup]:
    if not dry_run:
        return {
            "sd15": Setup("SD1.5 UNet, 512²", SD15, 64),
            "sdxl": Setup("SDXL UNet, 1024²", SDXL, 128),
            "motion": Setup("motion UNet, 512² × 16 frames", SD15, 64, frames=16),
        }
    from tests.pipelines.tiny import MOTION_ADAPTER
    from tests.weights.tiny_models import UNET

    time_dim, text_dim = 8, 20
    sdxl = dict(
        UNET,
        cross_attention_dim=48,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text_dim,
        use_linear_projection=True,
        transformer_layers_per_block=(2, 1),
    )
    return {
        "sd15": Setup("tiny SD-style UNet, 64²", UNET, 8),
        "sdxl": Setup("tiny SDXL-style UNet, 64²", sdxl, 8),
        "motion": Setup("tiny motion UNet, 64² × 4 frames", UNET, 8, 4, MOTION_ADAPTER),
    }


def inputs(setup: Setup) -> dict[str, np.ndarray]:
    """A CFG batch (2) of channels-last latents, timesteps, context and SDXL's extra inputs."""
    rng = np.random.default_rng(0)
    frames = (setup.frames,) if setup.frames else ()
    shape = (2, *frames, setup.latent, setup.latent, 4)
    x = dict(
        sample=rng.standard_normal(shape, np.float32),
        timesteps=np.full((2,), 500.0, np.float32),
        context=rng.standard_normal((2, 77, setup.unet["cross_attention_dim"]), np.float32),
    )
    if setup.unet.get("addition_embed_type") == "text_time":
        time_dim = setup.unet["addition_time_embed_dim"]
        text_dim = setup.unet["projection_class_embeddings_input_dim"] - 6 * time_dim
        size = 8.0 * setup.latent
        x["text_embeds"] = rng.standard_normal((2, text_dim), np.float32)
        x["time_ids"] = np.tile(np.array([[size, size, 0, 0, size, size]], np.float32), (2, 1))
    return x


def build_torch(setup: Setup, device: str):
    """The diffusers model in fp32 on `device`, with diffusers' default init from seed 0."""
    import diffusers
    import torch

    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(**setup.unet)
        if setup.frames:
            adapter = diffusers.MotionAdapter(**setup.motion_adapter)
            unet = diffusers.UNetMotionModel.from_unet2d(unet, adapter)
    return unet.to(device).eval()


def to_mv2_jax(model, attention: str):
    """(module, bf16 params on the default device) from the diffusers model: its config and
    state dict through the family's key mapping, as `load_component` reads a folder."""
    import jax.numpy as jnp

    from mv2_jax.weights.load import build_module
    from mv2_jax.weights.mapping import convert_state_dict
    from mv2_jax.weights.registry import param_shapes

    config = json.loads(model.to_json_string())
    module, family = build_module(config, jnp.bfloat16, where=f"{type(model).__name__} config")
    module = module.clone(attention_implementation=attention)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    params = convert_state_dict(
        state,
        param_shapes(module, family),
        family.rules,
        what=type(model).__name__,
        place=lambda path, value: jnp.asarray(value),  # cast to bf16 on the host: no compiles
        hints=family.hints,
    )
    return module, params


def measure_jax(module, params, x: dict, repeats: int) -> tuple[dict, np.ndarray]:
    import jax
    import jax.numpy as jnp

    def put(a):
        return jax.device_put(jnp.asarray(a, jnp.bfloat16))

    extra = {k: put(x[k]) for k in ("text_embeds", "time_ids") if k in x} or None
    t = jax.device_put(x["timesteps"])  # fp32, as diffusers takes them
    args = ({"params": params}, put(x["sample"]), t, put(x["context"]), extra)
    compile_s, step = compile_timed(jax.jit(module.apply), *args)
    out = {}
    first_s = timed(lambda: out.setdefault("y", jax.block_until_ready(step(*args))))
    seconds = [timed(lambda: jax.block_until_ready(step(*args))) for _ in range(repeats)]
    row = dict(compile_s=compile_s, first_s=first_s, seconds=seconds)
    return row, np.asarray(out["y"], np.float32)


def torch_call(model, x: dict, dtype, device: str):
    """A no-argument step of `model` on `x` (channels-first, on `device`, in `dtype`) that
    returns its channels-last output once the device is done."""
    import torch

    def put(a):
        return torch.from_numpy(a).to(device=device, dtype=dtype)

    sample = put(np.moveaxis(x["sample"], -1, 1))  # [B,C,H,W] or [B,C,F,H,W]
    t = torch.from_numpy(x["timesteps"]).to(device)
    context = put(x["context"])
    if sample.ndim == 5:
        context = context.repeat_interleave(sample.shape[2], 0)  # one per frame, as diffusers
    extra = {k: put(x[k]) for k in ("text_embeds", "time_ids") if k in x} or None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            y = model(sample, t, context, added_cond_kwargs=extra).sample
        sync()
        return y

    return run


def measure_torch(run, repeats: int) -> tuple[dict, np.ndarray]:
    out = {}
    first_s = timed(lambda: out.setdefault("y", run()))
    seconds = [timed(run) for _ in range(repeats)]
    y = np.moveaxis(out["y"].float().cpu().numpy(), 1, -1)
    return dict(first_s=first_s, seconds=seconds), y


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def versions(dists: tuple[str, ...]) -> dict[str, str]:
    import importlib.metadata

    found = {}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def device_info(device: str) -> dict:
    import jax
    import torch

    found = versions(("jax", "jaxlib", "flax", "torch", "diffusers", "transformers"))
    found["CUDA (torch)"] = torch.version.cuda or "—"
    card = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    return dict(card=card, jax_device=str(jax.devices()[0]), versions=found)


def print_info() -> None:
    import jax
    import torch

    info = device_info("cuda" if torch.cuda.is_available() else "cpu")
    print(f"card: {info['card']}; python {sys.version.split()[0]}")
    found = {**info["versions"], **versions(("optax", "ml_collections", "av", "peft"))}
    print(", ".join(f"{k} {v}" for k, v in found.items()))
    print(f"jax: default backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"torch: CUDA available {torch.cuda.is_available()}")


def measure(name: str, args) -> None:
    import torch

    setup = setups(args.dry_run)[name]
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    compile_backend = "eager" if args.dry_run else "inductor"
    result = dict(model=name, title=setup.title, dry_run=args.dry_run, rows={}, errors={})
    result.update(device_info(device))
    path = Path(args.out) if args.out else None

    def save() -> None:
        if path is not None:
            path.write_text(json.dumps(result, indent=1))

    outputs: dict[str, np.ndarray] = {}

    def attempt(label: str, fn) -> None:
        """Run one measurement; its row (or its error) is saved before the next begins, with
        each output's difference from the baseline's as soon as both exist."""
        result["running"] = label
        save()
        print(f"[{name}] {label}", file=sys.stderr, flush=True)
        try:
            result["rows"][label], outputs[label] = fn()
        except Exception as e:  # one failing measurement must not hide the others
            result["errors"][label] = f"{type(e).__name__}: {e}"[:500]
            print(f"[{name}] {label} failed: {result['errors'][label]}", file=sys.stderr)
        if BASELINE in outputs:
            for other, y in outputs.items():
                result["rows"][other]["diff_vs_baseline"] = relative_diff(y, outputs[BASELINE])

    start = time.perf_counter()
    model = build_torch(setup, device)
    result["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    module, params = to_mv2_jax(model, args.attention)
    result["load_s"] = time.perf_counter() - start
    x = inputs(setup)
    attempt(JAX_ROW, partial(measure_jax, module, params, x, args.repeats))
    del params  # the card's memory is torch's from here on
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model.to(dtype)
        run = torch_call(model, x, dtype, device)
        attempt(f"diffusers {dtype_name} eager", partial(measure_torch, run, args.repeats))
    model.to(torch.bfloat16)
    compiled = torch.compile(model, backend=compile_backend)
    run = torch_call(compiled, x, torch.bfloat16, device)
    label = f"diffusers bf16 torch.compile ({compile_backend})"
    attempt(label, partial(measure_torch, run, args.repeats))
    del result["running"]
    save()
    steps = ", ".join(f"{k} {1e3 * median(v['seconds']):.1f} ms" for k, v in result["rows"].items())
    loaded = f"{result['params_m']:.1f} M params, loaded in {result['load_s']:.1f} s"
    print(f"[{name}] {loaded}; {steps}")


def report(paths: list[str]) -> str:
    """The markdown table of the JSON files `measure` wrote (missing or partial ones noted)."""
    results, lines = [], []
    for p in paths:
        if not Path(p).exists():
            lines.append(f"- {Path(p).stem}: no result (stopped or failed before measuring)")
            continue
        results.append(json.loads(Path(p).read_text()))
    rows = []
    for r in results:
        base = r["rows"].get(BASELINE)
        base_s = median(base["seconds"]) if base else None
        for label, m in r["rows"].items():
            step = median(m["seconds"])
            compile_s = m.get("compile_s", m["first_s"] - step if "compile" in label else None)
            diff = m.get("diff_vs_baseline")
            rows.append(
                [
                    r["title"],
                    label,
                    "—" if compile_s is None else f"{compile_s:.1f}",
                    f"{m['first_s']:.2f}",
                    f"{1e3 * step:.1f}",
                    f"{step / base_s:.2f}" if base_s else "",
                    "" if diff is None else f"{diff:.1e}",
                ]
            )
        if "running" in r:
            lines.append(f"- {r['title']}: stopped during «{r['running']}» (time cap or crash)")
        for label, error in r["errors"].items():
            lines.append(f"- {r['title']}, {label}: {error}")
    head = results[0] if results else {"card": "?", "versions": {}}
    versions = ", ".join(f"{k} {v}" for k, v in head["versions"].items())
    dry = " (dry run: tiny configs on CPU, not a measurement)" if head.get("dry_run") else ""
    headers = [
        "model",
        "implementation",
        "compile s",
        "first call s",
        "step ms (median)",
        f"× {BASELINE}",
        f"rel. diff vs {BASELINE}",
    ]
    text = [
        f"## Accelerator check: one CFG step (batch 2) on {head['card']}{dry}",
        "",
        versions,
        "",
        table(headers, rows),
    ]
    if lines:
        text += ["", *lines]
    text += [
        "",
        "compile s: mv2_jax lower + compile; torch.compile first call − median step (≈ its "
        "compile). rel. diff: max |y − y_ref| / max |y_ref| over the output.",
    ]
    return "\n".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=MODELS, help="measure this model")
    parser.add_argument("--out", help="JSON file the measurement is written to as it goes")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these")
    parser.add_argument("--info", action="store_true", help="print the card, versions, devices")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 10; 2)")
    parser.add_argument("--attention", default="auto", help="mv2_jax attention implementation")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny configs on CPU: the code paths, in seconds"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(report(args.table))
        return
    if args.info:
        print_info()
        return
    if args.model is None:
        parser.error("give --model (or --table)")
    if args.repeats is None:
        args.repeats = 2 if args.dry_run else 10
    if args.dry_run:
        import jax

        jax.config.update("jax_platforms", "cpu")
    measure(args.model, args)


if __name__ == "__main__":
    main()
