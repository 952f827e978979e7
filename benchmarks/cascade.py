"""The text-to-video cascade's time per stage on this machine: the first prompt (compiles
included) and the next prompts (compiled functions reused), for each of T2I, I2V, V2V, VFI.

Models: the folders given (as `sample.py cascade` takes them), else small random models of the
training configs' `tiny` variants (configs/t2i.py, configs/i2v.py: ~1 M-param UNets, a 2× VAE,
a 2-layer CLIP), V2V in training-free SDEdit mode on the I2V model, and the shipped VFI
weights. There is no PyTorch cascade to compare with (diffusers has no V2V or VFI stage); the
per-stage PyTorch ratios are in the I2V / V2V step benchmarks.

    python benchmarks/cascade.py                               # tiny random models
    python benchmarks/cascade.py --t2i-model SD --i2v-model AD --key-size 512 --size 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import CACHE, machine, median, peak_rss_gb, table

PROMPTS = ("a red circle moving right", "a blue square moving up", "a green triangle moving left")


def random_folders() -> tuple[Path, Path]:
    """Random T2I and I2V pipeline folders of the `tiny` training configs, made once."""
    from configs.i2v import tiny_model as tiny_video_model
    from configs.t2i import tiny_model as tiny_image_model
    from mv2_jax.training.random_pipeline import write_random_pipeline

    folders = CACHE / "cascade_t2i", CACHE / "cascade_i2v"
    for folder, model in zip(folders, (tiny_image_model(), tiny_video_model())):
        if not folder.exists():  # written whole or not at all
            write_random_pipeline(model, folder, seed=0)
    return folders


def build(args):
    import mv2_jax
    from mv2_jax.pipelines.cascade import TextToVideoCascade
    from mv2_jax.pipelines.loading import load_i2v_pipeline, load_v2v_pipeline
    from mv2_jax.pipelines.vfi import load_vfi_pipeline

    if args.t2i_model is None or args.i2v_model is None:
        t2i_folder, i2v_folder = random_folders()
        args.t2i_model = args.t2i_model or t2i_folder
        args.i2v_model = args.i2v_model or i2v_folder
    marks = []  # (stage, start time) as the cascade reports each stage
    cascade = TextToVideoCascade(
        image_to_video=load_i2v_pipeline(args.i2v_model),
        text_to_image=mv2_jax.load_pipeline(args.t2i_model),
        video_to_video=load_v2v_pipeline(args.v2v_model or args.i2v_model),
        interpolator=load_vfi_pipeline(args.vfi_model),
        report=lambda line: marks.append((line.split()[1].rstrip(":"), time.perf_counter())),
    )
    return cascade, marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for stage in ("t2i", "i2v", "v2v", "vfi"):
        parser.add_argument(f"--{stage}-model", metavar="FOLDER")
    parser.add_argument("--key-size", type=int, default=64, help="T2I size (default 64)")
    parser.add_argument("--size", type=int, default=64, help="I2V size (default 64)")
    parser.add_argument("--upscale", type=int, default=2, help="V2V size = size × this")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps of every diffusion stage")
    parser.add_argument("--prompts", type=int, default=3, help="prompts run (the first compiles)")
    args = parser.parse_args(argv)

    from mv2_jax.pipelines.cascade import StageSettings

    cascade, marks = build(args)
    size, high = args.size, args.size * args.upscale
    settings = dict(
        t2i=StageSettings(steps=args.steps, height=args.key_size, width=args.key_size),
        i2v=StageSettings(steps=args.steps, height=size, width=size),
        v2v=StageSettings(steps=args.steps, height=high, width=high, extra={"strength": 0.5}),
        num_frames=args.frames,
        factor=args.factor,
        progress=False,
    )
    seconds: dict[str, list[float]] = {}
    totals = []
    for i in range(args.prompts):
        marks.clear()
        start = time.perf_counter()
        out = cascade(PROMPTS[i % len(PROMPTS)], **settings)
        end = time.perf_counter()
        totals.append(end - start)
        for (stage, begun), (_, ended) in zip(marks, [*marks[1:], (None, end)]):
            seconds.setdefault(stage, []).append(ended - begun)
    plan = cascade.plan(**{k: v for k, v in settings.items() if k != "progress"})
    rows = [
        [stage, plan.describe(stage), f"{times[0]:.2f}", f"{median(times[1:]):.2f}"]
        for stage, times in seconds.items()
    ]
    rows.append(["total", f"{out.frames.shape[0]} frames", f"{totals[0]:.2f}",
                 f"{median(totals[1:]):.2f}"])  # fmt: skip
    print(machine())
    print(f"models: t2i {args.t2i_model}, i2v {args.i2v_model}, v2v "
          f"{args.v2v_model or 'SDEdit on the I2V model'}, vfi {args.vfi_model or 'shipped'}; "
          f"{args.steps} steps per diffusion stage, peak RSS {peak_rss_gb():.1f} GB")  # fmt: skip
    print(table(["stage", "work", "first prompt s (compiles)", "next prompts s (median)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
