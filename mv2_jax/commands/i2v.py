"""`sample.py i2v`: image → video. The key image conditions the motion UNet through reference
attention (appearance encoder), an RGB ControlNet, an IP-Adapter and a latent noise prior, each
weighted by its flag; those flags, their settings and checks are shared with `sample.py v2v`
and the cascade."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
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
class ConditioningFlags:
    """The key image's conditioning flags (`add_conditioning_flags`); a scale None: off."""

    reference_scale: float | None
    controlnet: str | None
    controlnet_scale: float | None
    controlnet_frames: str
    ip_adapter: str | None
    image_encoder: str | None
    ip_adapter_scale: float | None
    noise_prior: str
    noise_prior_strength: float


@dataclass(frozen=True)
class I2VFlags:
    prompt: str
    image: str
    sampling: SamplingFlags
    video: VideoFlags
    conditioning: ConditioningFlags
    device: DeviceFlags
    runtime: RuntimeFlags


def settings(args: argparse.Namespace) -> I2VFlags:
    return I2VFlags(
        prompt=args.prompt,
        image=args.image,
        sampling=from_namespace(SamplingFlags, args),
        video=from_namespace(VideoFlags, args),
        conditioning=from_namespace(ConditioningFlags, args),
        device=from_namespace(DeviceFlags, args),
        runtime=from_namespace(RuntimeFlags, args),
    )


def scale_or_off(text: str) -> float | None:
    """A conditioning weight: a finite number, or "off" (None: not computed at all)."""
    if text.lower() == "off":
        return None
    return finite_float(text)


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
    add_video_flags(i2v, "i2v")


def add_conditioning_flags(parser: argparse.ArgumentParser) -> None:
    """The key image's conditioning flags (image → video, and video → video after it)."""
    from mv2_jax.pipelines.defaults import CONTROLNET_FRAMES, NOISE_PRIORS

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
        type=finite_float,
        default=0.05,
        metavar="A",
        help="a in [0, 1] (default 0.05)",
    )


def conditioning_problems(flags: ConditioningFlags) -> list[str]:
    """The cheap checks of `add_conditioning_flags`'s flags."""
    problems = []
    folders = (("--controlnet", flags.controlnet), ("--image-encoder", flags.image_encoder))
    for flag, value in folders:
        if value is not None and not Path(value, "config.json").is_file():
            problems.append(f"{flag} {value}: not a component folder (no config.json)")
    if flags.ip_adapter is not None and not Path(flags.ip_adapter).exists():
        problems.append(f"--ip-adapter {flags.ip_adapter}: no such file")
    if not 0.0 <= flags.noise_prior_strength <= 1.0:
        problems.append(f"--noise-prior-strength {flags.noise_prior_strength}: must be in [0, 1]")
    return problems


def conditioning_kwargs(flags: ConditioningFlags) -> dict:
    """The pipeline's conditioning arguments from `add_conditioning_flags`'s flags."""
    return dict(
        reference_scale=flags.reference_scale,
        controlnet_scale=flags.controlnet_scale,
        controlnet_frames=flags.controlnet_frames,
        ip_adapter_scale=flags.ip_adapter_scale,
        noise_prior=flags.noise_prior,
        noise_prior_strength=flags.noise_prior_strength,
    )


def component_kwargs(flags: ConditioningFlags) -> dict:
    """The extra component folders / files of `add_conditioning_flags` for the loaders."""
    return dict(
        controlnet=flags.controlnet, ip_adapter=flags.ip_adapter, image_encoder=flags.image_encoder
    )


def check(flags: I2VFlags) -> None:
    """Every cheap check of the i2v flags, all problems reported at once."""
    problems = sampling_problems(flags.sampling) + video_problems(flags.video)
    problems += conditioning_problems(flags.conditioning) + runtime_problems(flags.runtime)
    if not Path(flags.image).is_file():
        problems.append(f"--image {flags.image}: no such file; pass the key image (png, jpg, ...)")
    if problems:
        raise UsageError("\n".join(problems))


def run(flags: I2VFlags, session: Session) -> int:
    mesh = build_mesh(flags.device.mesh)
    from mv2_jax.media import load_image
    from mv2_jax.pipelines.loading import load_i2v_pipeline

    image = load_image(flags.image)
    session.progress(f"loading the I2V model {flags.sampling.model}")
    dtype = parse_dtype(flags.device.dtype)
    parts = component_kwargs(flags.conditioning)
    pipe = load_i2v_pipeline(flags.sampling.model, dtype=dtype, **parts)
    apply_loras(pipe, flags.sampling.lora, session.progress)
    conditioning = conditioning_kwargs(flags.conditioning)
    session.progress("sampling (compiling or restoring the compiled program first)")
    videos = pipe(
        image,
        flags.prompt,
        negative_prompt=flags.video.negative_prompt,
        num_frames=flags.video.num_frames,
        decode_chunk_size=flags.video.decode_chunk_size,
        **sampling_kwargs(flags.sampling, flags.device, mesh),
        **conditioning,
    )
    write_video_and_settings(
        videos,
        flags.sampling,
        flags.video,
        flags.device,
        flags.prompt,
        session,
        mesh,
        pipe,
        image=str(Path(flags.image).resolve()),
        **conditioning,
    )
    return 0
