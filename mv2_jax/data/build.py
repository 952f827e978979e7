"""Command line for building training datasets (tfds ArrayRecord) from files and captions:

    python -m mv2_jax.data.build video --videos-dir clips/ --manifest clips.csv --data-dir data/
    python -m mv2_jax.data.build image --images-dir imgs/ --manifest caps.jsonl --data-dir data/
    python -m mv2_jax.data.build image --parquet laion.parquet --data-dir data/
    python -m mv2_jax.data.build shapes --form video --num-examples 20000 --size 128 \
        --num-frames 8 --seed 0 --data-dir data/shapes_video      (the shapes world, issue 7)

Usage errors (missing folder or manifest, missing columns, …) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

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
    for command in (video, image, shapes):
        command.add_argument(
            "--data-dir", "--out", required=True, help="tfds data_dir to write the dataset into"
        )
        command.add_argument(
            "--overwrite", action="store_true", help="replace a dataset already in --data-dir"
        )
    return p


def main(argv: list[str] | None = None) -> int:
    require_train_extra("python -m mv2_jax.data.build")
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mv2_jax.data.builders import build_image_dataset, build_video_dataset

    try:
        if args.kind == "shapes":
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
