"""`sample.py v2v`: video → video super-resolution. Low-res keyframes (a video file or a folder
of frames) become the same video at a higher resolution, with a V2V model or, training-free,
SDEdit on an I2V model; the key image's conditioning flags are i2v's."""

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
from mv2_jax.commands.i2v import (
    add_conditioning_flags,
    component_kwargs,
    conditioning_kwargs,
    conditioning_problems,
)
from mv2_jax.commands.video import add_video_flags, video_problems, write_video_and_settings


def add_parser(commands) -> None:
    v2v = commands.add_parser(
        "v2v",
        help="video → video: low-res keyframes to high-res ones (MagicVideo-V2's V2V)",
        description="Video → video super-resolution. A VideoToVideoPipeline folder (its UNet "
        "takes the low-res latents beside the noisy ones, and a noise level) upscales with "
        "its own model; an AnimateDiff or ImageToVideoPipeline folder runs SDEdit (upsample, "
        "noise to --strength, denoise). Writes OUT and OUT's name with .json beside it.",
    )
    add_model_flag(v2v, "a VideoToVideoPipeline (or, for SDEdit, an AnimateDiff / I2V)")
    flag = v2v.add_argument
    flag(
        "--input",
        required=True,
        metavar="VIDEO",
        help="the low-res video (.mp4, .gif, ... or a folder of numbered frames); every "
        "frame is upscaled, at most the motion modules' motion_max_seq_length of them",
    )
    flag("--prompt", required=True, metavar="TEXT", help="what the video shows")
    flag(
        "--image",
        metavar="FILE",
        help="the key image for the conditionings below (default: the first input frame)",
    )
    flag(
        "--scale",
        type=float,
        metavar="X",
        help="target size = input size × X, rounded to a multiple of 8 (instead of "
        "--height/--width; default: those, else the model's size, 1048² for SD1.5-size "
        "models as in the paper)",
    )
    flag(
        "--noise-level",
        type=int,
        default=20,
        metavar="N",
        help="noise augmentation of the low-res latents, 0 to the model's num_class_embeds − 1 "
        "(a V2V model; training draws from [0, 350]; default 20)",
    )
    flag(
        "--strength",
        type=float,
        metavar="S",
        help="SDEdit: noise the upsampled input to S in (0, 1] and denoise from there (default: "
        "0.5 with an I2V model; a V2V model starts from pure noise unless given)",
    )
    flag(
        "--vae-tile-size",
        type=int,
        metavar="PX",
        help="encode / decode the VAE in overlapping tiles of PX² pixels (a multiple of 32, "
        "e.g. 512) so its memory follows a tile, not a frame (default: whole frames)",
    )
    add_conditioning_flags(v2v)
    v2v.set_defaults(noise_prior="none")  # V2V starts from its input, not the key image
    add_video_flags(v2v, frames_default=None)


def check(args: argparse.Namespace) -> None:
    """Every cheap check of the v2v flags, all problems reported at once."""
    problems = sampling_problems(args) + video_problems(args) + conditioning_problems(args)
    source = Path(args.input)
    if not source.exists():
        problems.append(f"--input {args.input}: no such file or folder; pass the low-res video")
    if args.image is not None and not Path(args.image).is_file():
        problems.append(f"--image {args.image}: no such file")
    if args.scale is not None and (args.height or args.width):
        problems.append("--scale and --height/--width both set the target size; give one")
    if args.scale is not None and not args.scale >= 1:
        problems.append(f"--scale {args.scale}: this upscales; use a factor ≥ 1")
    if args.strength is not None and not 0 < args.strength <= 1:
        problems.append(f"--strength {args.strength}: must be in (0, 1]")
    if args.noise_level < 0:
        problems.append(f"--noise-level {args.noise_level}: must be ≥ 0")
    if args.vae_tile_size is not None and (args.vae_tile_size < 32 or args.vae_tile_size % 32):
        problems.append(f"--vae-tile-size {args.vae_tile_size}: use a multiple of 32, e.g. 512")
    if problems:
        raise UsageError("\n".join(problems))


def scaled(size: int, scale: float) -> int:
    """`size · scale` to the nearest multiple of 8 (at least 8)."""
    return max(8, round(size * scale / 8) * 8)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    check(args)
    mesh = build_mesh(args.mesh)
    from mv2_jax.media import load_image, read_video
    from mv2_jax.pipelines.loading import load_v2v_pipeline

    video, _ = read_video(args.input)  # [F,H,W,3] in [0,1]
    if args.num_frames is not None:
        video = video[: args.num_frames]
    if args.scale is not None:
        args.height, args.width = (scaled(n, args.scale) for n in video.shape[1:3])
    image = None if args.image is None else load_image(args.image)
    pipe = load_v2v_pipeline(args.model, dtype_of(args), **component_kwargs(args))
    conditioning = conditioning_kwargs(args)
    v2v = dict(
        noise_level=args.noise_level, strength=args.strength, vae_tile_size=args.vae_tile_size
    )
    videos = pipe(
        video,
        args.prompt,
        negative_prompt=args.negative_prompt,
        image=image,
        decode_chunk_size=args.decode_chunk_size,
        **sampling_kwargs(args, mesh),
        **conditioning,
        **v2v,
    )
    write_video_and_settings(
        videos,
        args,
        argv,
        mesh,
        pipe,
        input=str(Path(args.input).resolve()),
        image=None if args.image is None else str(Path(args.image).resolve()),
        mode="v2v" if pipe.takes_low_res else "sdedit",
        **conditioning,
        **v2v,
    )
    return 0
