"""PyTorch weights → mv2_jax's orbax form (`config.json` + `params/` per component).

    python convert/to_flax.py PATH --out DIR [--dtype bf16] [--config FOLDER] [--model-type T]
    python convert/to_flax.py SD_FOLDER --motion-adapter mm_sd_v15_v2.ckpt --out DIR
    python convert/to_flax.py SDXL_FOLDER --lora style.safetensors:0.8 --lora-scale 1 --out DIR
    mv2-convert ...                      (the same program, installed with the package)

The mapping itself lives in `mv2_jax.weights`; this file only reads the command line.
"""

from __future__ import annotations

import argparse
import sys

from mv2_jax.commands.lora_flags import lora_flag
from mv2_jax.dtypes import DTYPE_CHOICES
from mv2_jax.weights.convert import convert_path
from mv2_jax.weights.mapping import WeightMismatchError
from mv2_jax.weights.safetensors_io import CheckpointFileError
from mv2_jax.weights.single_file import MODEL_TYPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    types = "; ".join(f"{k}: {v}" for k, v in MODEL_TYPES.items())
    parser = argparse.ArgumentParser(
        prog="to_flax.py",
        description=__doc__.split("\n")[0]
        + " Reads a diffusers/transformers component folder (config.json + *.safetensors), a "
        "whole diffusers pipeline folder (model_index.json), or an original single-file "
        "checkpoint (SD1.x / SD2.x / SDXL .safetensors, or .ckpt/.pt/.bin read with "
        "torch.load(weights_only=True); single files need torch + diffusers). "
        "Read the result with mv2_jax.load_component(DIR or DIR/<component>).",
    )
    parser.add_argument(
        "path",
        help="component folder, pipeline folder, or single-file checkpoint to convert",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder: config.json + params/ for a component; for a pipeline the same "
        "folder layout with model_index.json, each model converted and tokenizer/scheduler "
        "folders copied",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="fp32",
        help="precision the params are stored in (default fp32); load_component casts to the "
        "dtype it is asked for",
    )
    parser.add_argument(
        "--config",
        help="single files only: a diffusers-format folder with the component configs (a "
        "pipeline folder, or one component's folder to extract just that component); "
        "default: the configs shipped for --model-type",
    )
    parser.add_argument(
        "--model-type",
        choices=sorted(MODEL_TYPES),
        help=f"single files only, without --config: which shipped configs to use ({types}); "
        "default: detected from the checkpoint's keys",
    )
    parser.add_argument(
        "--motion-adapter",
        metavar="FILE_OR_FOLDER",
        help="AnimateDiff: add these motion modules (an original v1/v2/v3 motion-module "
        ".ckpt/.safetensors, read through diffusers' converter, or a diffusers MotionAdapter "
        "folder) to PATH, a diffusers SD pipeline folder (→ an AnimateDiffPipeline folder, "
        "scheduler set to AnimateDiff's linear betas) or UNet folder (→ a UNetMotionModel)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        type=lora_flag,
        metavar="PATH[:SCALE]",
        help="fuse this LoRA (file or folder: diffusers / peft, kohya / A1111 incl. LoCon and "
        "SDXL names, AnimateDiff motion LoRAs) into the converted pipeline's unet / text "
        "encoders at SCALE (default --lora-scale); repeat to fuse several. A LoRA that does "
        "not fit the model stops with its keys listed, and nothing is written",
    )
    parser.add_argument(
        "--lora-scale",
        type=float,
        default=1.0,
        metavar="SCALE",
        help="the scale of each --lora given without :SCALE (default 1)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists and is not empty",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = convert_path(
            args.path,
            args.out,
            config=args.config,
            model_type=args.model_type,
            dtype=args.dtype,
            overwrite=args.overwrite,
            motion_adapter=args.motion_adapter,
            loras=[
                (lora.path, args.lora_scale if lora.scale is None else lora.scale)
                for lora in args.lora
            ],
        )
    except (
        FileNotFoundError,
        NotADirectoryError,
        FileExistsError,
        CheckpointFileError,
        WeightMismatchError,
        ValueError,
        NotImplementedError,
        ImportError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
