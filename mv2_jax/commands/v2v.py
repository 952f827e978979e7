"""`sample.py v2v`: video → video super-resolution. Low-res keyframes (a video file or a folder
of frames) become the same video at a higher resolution, with a V2V model or, training-free,
SDEdit on an I2V model; the key image's conditioning flags are i2v's."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from mv2_jax.commands.common import (
    DeviceFlags,
    RuntimeFlags,
    SamplingFlags,
    UsageError,
    add_model_flag,
    build_mesh,
    finite_float,
    from_namespace,
    runtime_problems,
    sampling_kwargs,
    sampling_problems,
)
from mv2_jax.commands.i2v import (
    ConditioningFlags,
    add_conditioning_flags,
    component_kwargs,
    conditioning_kwargs,
    conditioning_problems,
)
from mv2_jax.commands.lora_flags import apply_loras
from mv2_jax.commands.session import Session
from mv2_jax.commands.video import (
    VideoFlags,
    add_video_flags,
    video_problems,
    write_video_and_settings,
)
from mv2_jax.dtypes import parse_dtype


@dataclass(frozen=True)
class V2VFlags:
    prompt: str
    input: str
    image: str | None
    scale: float | None
    noise_level: int
    strength: float | None
    vae_tile_size: int | None
    sampling: SamplingFlags
    video: VideoFlags
    conditioning: ConditioningFlags
    device: DeviceFlags
    runtime: RuntimeFlags


def settings(args: argparse.Namespace) -> V2VFlags:
    return from_namespace(
        V2VFlags,
        args,
        sampling=from_namespace(SamplingFlags, args),
        video=from_namespace(VideoFlags, args),
        conditioning=from_namespace(ConditioningFlags, args),
        device=from_namespace(DeviceFlags, args),
        runtime=from_namespace(RuntimeFlags, args),
    )


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
        type=finite_float,
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
        type=finite_float,
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
    add_video_flags(v2v, "v2v")


def check(flags: V2VFlags) -> None:
    """Every cheap check of the v2v flags, all problems reported at once."""
    sampling = flags.sampling
    problems = sampling_problems(sampling) + video_problems(flags.video)
    problems += conditioning_problems(flags.conditioning) + runtime_problems(flags.runtime)
    if not Path(flags.input).exists():
        problems.append(f"--input {flags.input}: no such file or folder; pass the low-res video")
    if flags.image is not None and not Path(flags.image).is_file():
        problems.append(f"--image {flags.image}: no such file")
    if flags.scale is not None and (sampling.height or sampling.width):
        problems.append("--scale and --height/--width both set the target size; give one")
    if flags.scale is not None and not flags.scale >= 1:
        problems.append(f"--scale {flags.scale}: this upscales; use a factor ≥ 1")
    if flags.strength is not None and not 0 < flags.strength <= 1:
        problems.append(f"--strength {flags.strength}: must be in (0, 1]")
    if flags.noise_level < 0:
        problems.append(f"--noise-level {flags.noise_level}: must be ≥ 0")
    tile = flags.vae_tile_size
    if tile is not None and (tile < 32 or tile % 32):
        problems.append(f"--vae-tile-size {tile}: use a multiple of 32, e.g. 512")
    if problems:
        raise UsageError("\n".join(problems))


def scaled(size: int, scale: float) -> int:
    """`size · scale` to the nearest multiple of 8 (at least 8)."""
    return max(8, round(size * scale / 8) * 8)


def run(flags: V2VFlags, session: Session) -> int:
    mesh = build_mesh(flags.device.mesh)
    from mv2_jax.media import load_image, read_video
    from mv2_jax.pipelines.loading import load_v2v_pipeline

    video, _ = read_video(flags.input)  # [F,H,W,3] in [0,1]
    if flags.video.num_frames is not None:
        video = video[: flags.video.num_frames]
    sampling = flags.sampling
    if flags.scale is not None:
        height, width = (scaled(n, flags.scale) for n in video.shape[1:3])
        sampling = replace(sampling, height=height, width=width)
    image = None if flags.image is None else load_image(flags.image)
    session.progress(f"loading the V2V model {sampling.model}")
    dtype = parse_dtype(flags.device.dtype)
    parts = component_kwargs(flags.conditioning)
    pipe = load_v2v_pipeline(sampling.model, dtype=dtype, **parts)
    apply_loras(pipe, flags.sampling.lora, session.progress)
    conditioning = conditioning_kwargs(flags.conditioning)
    v2v = dict(
        noise_level=flags.noise_level, strength=flags.strength, vae_tile_size=flags.vae_tile_size
    )
    session.progress("sampling (compiling or restoring the compiled program first)")
    videos = pipe(
        video,
        flags.prompt,
        negative_prompt=flags.video.negative_prompt,
        image=image,
        decode_chunk_size=flags.video.decode_chunk_size,
        **sampling_kwargs(sampling, flags.device, mesh),
        **conditioning,
        **v2v,
    )
    write_video_and_settings(
        videos,
        sampling,
        flags.video,
        flags.device,
        flags.prompt,
        session,
        mesh,
        pipe,
        input=str(Path(flags.input).resolve()),
        image=None if flags.image is None else str(Path(flags.image).resolve()),
        mode="v2v" if pipe.takes_low_res else "sdedit",
        **conditioning,
        **v2v,
    )
    return 0
