"""Command line for building training datasets (tfds ArrayRecord) from files and captions:

    python -m mv2_jax.data.build video --videos-dir clips/ --manifest clips.csv --data-dir data/
    python -m mv2_jax.data.build image --images-dir imgs/ --manifest caps.jsonl --data-dir data/
    python -m mv2_jax.data.build image --parquet laion.parquet --data-dir data/
    python -m mv2_jax.data.build shapes --form video --num-examples 20000 --size 128 \
        --num-frames 8 --seed 0 --data-dir data/shapes_video      (the shapes world, issue 7)
    python -m mv2_jax.data.build preferences --votes votes.jsonl --data-dir data/prefs
        (or --pairs pairs.jsonl, or --pickapic train.parquet: mv2_jax.data.preferences)

Usage errors (missing folder or manifest, missing columns, …) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mv2_jax.data.manifest import ManifestError
from mv2_jax.extras import require_train_extra


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mv2_jax.data.build",
        description="Build a tfds ArrayRecord dataset of encoded videos or images with captions "
        "for mv2_jax.data.make_train_iterator.",
    )
    sub = p.add_subparsers(dest="kind", required=True)
    manifest_help = (
        "CSV (with header) or JSONL manifest with columns `path` (relative to the folder) and "
        "`caption`"
    )
    video = sub.add_parser("video", help="videos + captions → <data-dir>/video_text/1.0.0")
    video.add_argument("--videos-dir", required=True, help="folder holding the video files")
    video.add_argument(
        "--manifest", required=True, help=manifest_help + ", optionally `fps` (frames/s)"
    )
    image = sub.add_parser("image", help="images + captions → <data-dir>/image_text/1.0.0")
    image.add_argument("--images-dir", help="folder holding the image files (with --manifest)")
    image.add_argument("--manifest", help=manifest_help)
    image.add_argument(
        "--parquet", help="parquet file with columns `image` (bytes) and `caption` instead"
    )
    shapes = sub.add_parser(
        "shapes",
        help="shapes-world clips (mv2_jax.data.shapes) → <data-dir>/video_text/1.0.0 or "
        "<data-dir>/image_text/1.0.0",
    )
    shapes.add_argument(
        "--form", choices=("video", "image"), default="video", help="clips, or their first frames"
    )
    shapes.add_argument("--num-examples", type=int, default=20000, help="examples to write")
    shapes.add_argument("--size", type=int, default=128, help="frame side in pixels")
    shapes.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    shapes.add_argument("--seed", type=int, default=0, help="example i is a function of (seed, i)")
    shapes.add_argument(
        "--workers", type=int, default=1, help="processes rendering and encoding (default 1)"
    )
    shapes.add_argument(
        "--travel-scale",
        type=float,
        default=1.0,
        help="objects travel this × the world's usual distance (0.5: slow motion, e.g. the "
        "data of a speed LoRA; at most 1.28, beyond which they would leave the frame)",
    )
    preferences = sub.add_parser(
        "preferences",
        help="preference pairs (a study's votes, a JSONL of pairs or Pick-a-Pic parquet) → "
        "<data-dir>/preference_pairs/1.0.0",
    )
    add_preference_arguments(preferences)
    for command in (video, image, shapes, preferences):
        command.add_argument(
            "--data-dir", "--out", required=True, help="tfds data_dir to write the dataset into"
        )
        command.add_argument(
            "--overwrite", action="store_true", help="replace a dataset already in --data-dir"
        )
    return p


def add_preference_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `preferences` (rules in mv2_jax.data.preferences / preference_votes)."""
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--votes", help="a study's export (`python -m mv2_jax.studies export`)")
    inputs.add_argument(
        "--pairs", help='JSONL of {"prompt", "chosen", "rejected"[, "weight"]} image/video paths'
    )
    inputs.add_argument(
        "--pickapic", help="parquet in Pick-a-Pic v2's layout (caption, jpg_0, jpg_1, label_0)"
    )
    p.add_argument(
        "--media-dir", help="folder that relative media paths are in (default: the input's folder)"
    )
    p.add_argument(
        "--criterion",
        default="overall",
        help="--votes: the criteria whose votes become pairs, comma-separated (default overall)",
    )
    p.add_argument(
        "--ties",
        choices=("drop", "keep"),
        default="drop",
        help="drop ties, or keep each as two pairs (both ways round) of half weight",
    )
    p.add_argument(
        "--min-gold-accuracy",
        type=float,
        default=0.8,
        help="--votes: drop raters whose gold-check accuracy is below this (default 0.8)",
    )
    p.add_argument("--raters", help="--votes: only these raters' votes, comma-separated")
    p.add_argument(
        "--aggregate",
        choices=("majority", "each"),
        default="majority",
        help="--votes: one pair per (pair, criterion) by majority, or one per vote weighted 1/n",
    )


def _build_preferences(args) -> Path:
    from mv2_jax.data.preferences import build_preference_dataset

    criteria = tuple(c.strip() for c in args.criterion.split(",") if c.strip())
    raters = None if args.raters is None else tuple(r.strip() for r in args.raters.split(","))
    return build_preference_dataset(
        args.data_dir,
        votes=args.votes,
        pairs=args.pairs,
        pickapic=args.pickapic,
        media_dir=args.media_dir,
        criteria=criteria,
        ties=args.ties,
        min_gold_accuracy=args.min_gold_accuracy,
        raters=raters,
        aggregate=args.aggregate,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    require_train_extra("python -m mv2_jax.data.build")
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mv2_jax.data.builders import build_image_dataset, build_video_dataset

    try:
        if args.kind == "preferences":
            folder = _build_preferences(args)
        elif args.kind == "shapes":
            from mv2_jax.data.shapes_dataset import build_shapes_dataset

            folder = build_shapes_dataset(
                args.data_dir,
                form=args.form,
                num_examples=args.num_examples,
                size=args.size,
                num_frames=args.num_frames,
                seed=args.seed,
                workers=args.workers,
                overwrite=args.overwrite,
                travel_scale=args.travel_scale,
            )
        elif args.kind == "video":
            folder = build_video_dataset(
                args.videos_dir, args.manifest, args.data_dir, overwrite=args.overwrite
            )
        else:
            if (args.parquet is None) == (args.manifest is None):
                raise ValueError("give either --images-dir and --manifest, or --parquet")
            if args.manifest is not None and args.images_dir is None:
                raise ValueError("--manifest needs --images-dir, the folder its paths are in")
            folder = build_image_dataset(
                args.data_dir,
                images_dir=args.images_dir,
                manifest=args.manifest,
                parquet=args.parquet,
                overwrite=args.overwrite,
            )
    except (FileNotFoundError, FileExistsError, ManifestError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metadata = json.loads((folder / "metadata.json").read_text())
    print(f"wrote {metadata['written']} examples to {folder}; skipped {metadata['skipped'] or 0}")
    if metadata.get("counts"):  # preferences: what the input's rules kept and dropped
        print(f"input: {metadata['counts']}")
    for line in metadata.get("skipped_examples", [])[:5]:  # preferences: which, and where
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
