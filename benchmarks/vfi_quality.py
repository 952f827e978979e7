"""×3 frame interpolation quality on photographs the training never saw: PSNR (and SSIM) of
the two new frames (t = 1/3, 2/3) against the truth, for the shipped `FrameInterpolator`, the
same architecture untrained (with `global_motion`: the phase-correlation translation alone),
the linear blend of the neighbours and the nearest neighbour, in one table.

Clips: random crops of the held-out scikit-image photographs (`HELDOUT_PHOTOS` in
mv2_jax/data/motion_clips.py: rocket, brick, motorcycle) under a camera pan of a given length
between the two keyframes (random direction, sub-pixel), and pans with a zoom; every frame is
rendered at its exact transform. Seeded: the same command gives the same clips.

    python benchmarks/vfi_quality.py                     # the weights in mv2_jax/assets/vfi
    python benchmarks/vfi_quality.py --model runs/vfi_export --size 128 --clips 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, table

SHIPPED = Path(__file__).resolve().parent.parent / "mv2_jax" / "assets" / "vfi"
TIMES = (1 / 3, 2 / 3)


def heldout_clip(rng: np.random.Generator, size: int, motion: float, zoom: float):
    """A held-out photograph under a pan of `motion` px (random direction) and a zoom by
    `zoom` between the keyframes."""
    from mv2_jax.data.motion_clips import HELDOUT_PHOTOS, Clip, Path2D, load_photo

    image = load_photo(HELDOUT_PHOTOS[rng.integers(len(HELDOUT_PHOTOS))])
    angle = rng.uniform(0, 2 * np.pi)
    pan = motion * np.array([np.sin(angle), np.cos(angle)])
    reach = size * 0.8 + np.abs(pan)
    start = rng.uniform(reach, np.array(image.shape[:2]) - reach)
    return Clip(image, Path2D(tuple(start), tuple(start + pan), 1.0, zoom))


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(-10 * np.log10(max(np.mean((x - y) ** 2), 1e-10)))


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(x, y, channel_axis=-1, data_range=1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED), help="a FrameInterpolator folder")
    parser.add_argument("--size", type=int, default=128, help="frame side (px)")
    parser.add_argument("--clips", type=int, default=12, help="clips per motion")
    parser.add_argument("--motions", type=float, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--zoom", type=float, default=1.08, help="zoom of the zoom+pan rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import mv2_jax

    model, params = mv2_jax.load_component(args.model)
    interpolate = jax.jit(lambda p, f0, f1, t: model.apply({"params": p}, f0, f1, t))
    # The same architecture untrained: its zero-initialised heads leave only the phase-
    # correlation translation (with `global_motion`) and the 50/50 mask.
    frame = jnp.zeros((1, model.size_multiple, model.size_multiple, 3))
    untrained = jax.jit(model.init)(jax.random.key(0, impl="rbg"), frame, frame, jnp.ones(1) / 2)
    methods = {"model": params, "untrained": untrained["params"]}
    cases = [(m, 1.0) for m in args.motions] + [(m, args.zoom) for m in args.motions[1:3]]
    rows, totals = [], {}
    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size)
    for motion, zoom in cases:
        scores: dict[str, list] = {"model": [], "untrained": [], "blend": [], "nearest": []}
        for _ in range(args.clips):
            clip = heldout_clip(rng, args.size, motion, zoom)
            f0, f1 = clip.render(0.0, shape), clip.render(1.0, shape)
            pair = jnp.asarray(np.stack([f0, f0])), jnp.asarray(np.stack([f1, f1]))
            times = jnp.asarray(TIMES, jnp.float32)
            made = {n: np.asarray(interpolate(p, *pair, times)) for n, p in methods.items()}
            for k, t in enumerate(TIMES):
                truth = clip.render(t, shape)
                guesses = {name: made[name][k] for name in methods}
                guesses["blend"] = (1 - t) * f0 + t * f1
                guesses["nearest"] = f0 if t < 0.5 else f1
                for name, guess in guesses.items():
                    scores[name].append((psnr(guess, truth), ssim(guess, truth)))
        label = f"pan {motion:g} px" + (f" + zoom ×{zoom:g}" if zoom != 1 else "")
        means = {name: np.mean(s, axis=0) for name, s in scores.items()}
        for name, s in scores.items():
            totals.setdefault(name, []).extend(s)
        rows.append([label, *(f"{means[n][0]:.2f}" for n in scores),
                     f"{means['model'][0] - means['blend'][0]:+.2f}",
                     *(f"{means[n][1]:.3f}" for n in scores)])  # fmt: skip
    overall = {name: np.mean(s, axis=0) for name, s in totals.items()}
    rows.append(["all", *(f"{overall[n][0]:.2f}" for n in overall),
                 f"{overall['model'][0] - overall['blend'][0]:+.2f}",
                 *(f"{overall[n][1]:.3f}" for n in overall)])  # fmt: skip
    print(machine())
    print(f"model {args.model}; {args.size}² frames, {args.clips} clips per row × t = 1/3, 2/3")
    header = ["motion between keyframes", *(f"{n} PSNR" for n in scores), "model − blend dB",
              *(f"{n} SSIM" for n in scores)]  # fmt: skip
    print(table(header, rows))


if __name__ == "__main__":
    main()
