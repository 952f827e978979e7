"""Does a shapes-world I2V run use the motion words of its captions? A probe of the training
checkpoints, far cheaper than sampling and scoring videos with evaluate.py.

For a fixed set of the run's precomputed clips, the denoising error on frames 1 … F−1 (frame 0
is the key image) is measured with each clip's own caption and with the same caption but
another motion — the opposite one (left ↔ right, up ↔ down: the sign) or the other axis
(left ↔ up, right ↔ down) — at the same timesteps and noise. A model that reads the motion
words does worse with the wrong one: the gap is (wrong − own) / own. A gap near 0 at every
noise level means the motion words are ignored, whatever the loss curve says.

    python benchmarks/shapes_motion_words.py --workdir runs/shapes/i2v --steps 500 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, table

SWAPS = {
    "sign": {"left": "right", "right": "left", "up": "down", "down": "up"},
    "axis": {"left": "up", "up": "left", "right": "down", "down": "right"},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the train.py --workdir of an I2V run")
    parser.add_argument("--steps", type=int, nargs="*", help="checkpoints (default: the latest)")
    parser.add_argument(
        "--data", help="precomputed clips (default: the run's config.data.precomputed_dir)"
    )
    parser.add_argument("--clips", type=int, default=16, help="clips probed (default 16)")
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=[900, 700, 400], help="noise levels"
    )
    parser.add_argument("--ema", action="store_true", help="the EMA weights")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mv2_jax.data.precompute import make_precomputed_iterator
    from mv2_jax.data.shapes import parse_prompt
    from mv2_jax.parallel.mesh import make_mesh
    from mv2_jax.training import losses, restore_params
    from mv2_jax.training.checkpoint import run_config
    from mv2_jax.training.trainer import model_folder, stage_class

    args = parse_args(argv)
    workdir = Path(args.workdir)
    config = run_config(workdir, "i2v")
    data = args.data or config.data.precomputed_dir
    if not data:
        raise SystemExit(f"{workdir}: not trained on precomputed clips; pass --data")
    stage = stage_class("i2v").from_config(
        config, model_folder(config, workdir), make_mesh(config.mesh), workdir=workdir
    )
    batch = next(make_precomputed_iterator(data, global_batch_size=args.clips, seed=123))
    captions = [str(c) for c in batch["caption"]]
    latents = jnp.asarray(stage.prepare(batch)["latents"])
    noise = jax.random.normal(jax.random.key(0), latents.shape)

    def context_of(texts):
        ids = stage.prepare({"caption": np.asarray(texts)})["input_ids"]
        return stage.encode_text(stage.consts["text"], jnp.asarray(ids))[0]

    def swapped(caption, swap):
        colour, shape, motion = parse_prompt(caption)
        return f"a {colour} {shape} moving {swap[motion]}"

    contexts = {"own": context_of(captions)}
    for name, swap in SWAPS.items():
        contexts[name] = context_of([swapped(c, swap) for c in captions])

    @jax.jit
    def errors(params, context, t):
        timesteps = jnp.full((latents.shape[0],), t, jnp.int32)
        noisy, target = losses.noisy_and_target(
            latents, noise, timesteps, stage.consts["alphas_cumprod"], stage.prediction_type
        )
        prediction = stage.predictor(params, latents, context)(noisy, timesteps)
        return jnp.square(prediction - target)[:, 1:].mean(axis=(1, 2, 3, 4))

    rows = []
    for step in args.steps or [None]:
        params = restore_params(workdir, step=step, ema=args.ema)
        for t in args.timesteps:
            own = errors(params, contexts["own"], t)
            row = [step if step is not None else "latest", t, f"{float(own.mean()):.4f}"]
            for name in SWAPS:
                wrong = errors(params, contexts[name], t)
                gap = float((wrong - own).mean() / own.mean())
                row.append(f"{gap:+.1%} ({int((own < wrong).sum())}/{len(captions)})")
            rows.append(row)
    print(f"{workdir} ({'EMA' if args.ema else 'trained weights'}), {len(captions)} clips of "
          f"{data}; {machine()}")  # fmt: skip
    headers = ["step", "t", "error, own caption", "sign gap (own better)", "axis gap"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
