"""`sample.py i2v`: image → video. The key image conditions the motion UNet through reference
attention (appearance encoder), an RGB ControlNet, an IP-Adapter and a latent noise prior, each
weighted by its flag; those flags and their checks are shared with `sample.py v2v`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mv2_jax.commands.common import (
    UsageError,
    add_model_flag,
    build_mesh,
    dtype_of,
    sampling_kwargs,
    sampling_problems,
)
from mv2_jax.commands.video import add_video_flags, video_problems, write_video_and_settings


def scale_or_off(text: str) -> float | None:
    """A conditioning weight: a number, or "off" (None: not computed at all)."""
    if text.lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'off'") from None


def add_parser(commands) -> None:
    i2v = commands.add_parser(
        "i2v",
        help="image → video: keyframes that keep a key image's look (MagicVideo-V2's I2V)",
        description="Image → video. The key image conditions the motion UNet through "
        "reference attention (appearance encoder), an RGB ControlNet, an IP-Adapter and a "
        "latent noise prior, each weighted by its flag ('off' skips it). Writes OUT and OUT's "
        "name with .json beside it.",
    )
    add_model_flag(i2v, "an AnimateDiff or mv2_jax ImageToVideoPipeline")
    flag = i2v.add_argument
    flag(
        "--image",
        required=True,
        metavar="FILE",
        help="the key image (png, jpg, ...); scaled to cover the video size and centre-cropped",
    )
    flag("--prompt", required=True, metavar="TEXT", help="what happens in the video")
    add_conditioning_flags(i2v)
    add_video_flags(i2v, frames_default=None)


def add_conditioning_flags(parser: argparse.ArgumentParser) -> None:
    """The key image's conditioning flags (image → video, and video → video after it)."""
    from mv2_jax.pipelines.i2v import CONTROLNET_FRAMES, NOISE_PRIORS

    flag = parser.add_argument
    weight = dict(type=scale_or_off, default=1.0, metavar="W")
    flag(
        "--reference-scale",
        **weight,
        help="weight of reference attention to the key image "
        "(appearance encoder: the folder's appearance_encoder/, else the UNet's own spatial "
        "weights); 'off' skips it (default 1)",
    )
    flag(
        "--controlnet",
        metavar="FOLDER",
        help="a SparseCtrl RGB (SparseControlNetModel) or SD "
        "ControlNetModel component folder fed the key image (default: the model's "
        "controlnet/, if any)",
    )
    flag(
        "--controlnet-scale",
        **weight,
        help="ControlNet residual weight; 'off' skips it (default 1)",
    )
    flag(
        "--controlnet-frames",
        choices=CONTROLNET_FRAMES,
        default="first",
        help="frames the ControlNet sees the key image on (default first)",
    )
    flag(
        "--ip-adapter",
        metavar="FILE",
        help="an IP-Adapter SD1.5 file (ip-adapter_sd15."
        "safetensors / .bin); needs --image-encoder (default: the model's ip_adapter/)",
    )
    flag(
        "--image-encoder",
        metavar="FOLDER",
        help="the IP-Adapter's CLIP image encoder "
        "(CLIPVisionModelWithProjection folder; default: the model's image_encoder/)",
    )
    flag("--ip-adapter-scale", **weight, help="image-prompt cross-attention weight (default 1)")
    flag(
        "--noise-prior",
        choices=NOISE_PRIORS,
        default="mean_shift",
        help="start from noise "
        "shifted toward the key image's latent: mean_shift z=√a·z_ref+√(1−a)·ε, or frequency "
        "(the reference's low frequencies); default mean_shift",
    )
    flag(
        "--noise-prior-strength",
        type=float,
        default=0.05,
        metavar="A",
        help="a in [0, 1] (default 0.05)",
    )


def conditioning_problems(args: argparse.Namespace) -> list[str]:
    """The cheap checks of `add_conditioning_flags`'s flags."""
    problems = []
    for flag in ("controlnet", "image_encoder"):
        value = getattr(args, flag)
        if value is not None and not Path(value, "config.json").is_file():
            problems.append(
                f"--{flag.replace('_', '-')} {value}: not a component folder (no config.json)"
            )
    if args.ip_adapter is not None and not Path(args.ip_adapter).exists():
        problems.append(f"--ip-adapter {args.ip_adapter}: no such file")
    if not 0.0 <= args.noise_prior_strength <= 1.0:
        problems.append(f"--noise-prior-strength {args.noise_prior_strength}: must be in [0, 1]")
    return problems


def conditioning_kwargs(args: argparse.Namespace) -> dict:
    """The pipeline's conditioning arguments from `add_conditioning_flags`'s flags."""
    return dict(
        reference_scale=args.reference_scale,
        controlnet_scale=args.controlnet_scale,
        controlnet_frames=args.controlnet_frames,
        ip_adapter_scale=args.ip_adapter_scale,
        noise_prior=args.noise_prior,
        noise_prior_strength=args.noise_prior_strength,
    )


def component_kwargs(args: argparse.Namespace) -> dict:
    """The extra component folders / files of `add_conditioning_flags` for the loaders."""
    return dict(
        controlnet=args.controlnet, ip_adapter=args.ip_adapter, image_encoder=args.image_encoder
    )


def check(args: argparse.Namespace) -> None:
    """Every cheap check of the i2v flags, all problems reported at once."""
    problems = sampling_problems(args) + video_problems(args) + conditioning_problems(args)
    if not Path(args.image).is_file():
        problems.append(f"--image {args.image}: no such file; pass the key image (png, jpg, ...)")
    if problems:
        raise UsageError("\n".join(problems))


def run(args: argparse.Namespace, argv: list[str]) -> int:
    check(args)
    mesh = build_mesh(args.mesh)
    from mv2_jax.media import load_image
    from mv2_jax.pipelines.loading import load_i2v_pipeline

    image = load_image(args.image)
    pipe = load_i2v_pipeline(args.model, dtype_of(args), **component_kwargs(args))
    conditioning = conditioning_kwargs(args)
    videos = pipe(
        image,
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=args.num_frames,
        decode_chunk_size=args.decode_chunk_size,
        **sampling_kwargs(args, mesh),
        **conditioning,
    )
    write_video_and_settings(
        videos, args, argv, mesh, pipe, image=str(Path(args.image).resolve()), **conditioning
    )
    return 0
