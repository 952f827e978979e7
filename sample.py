"""Sampling from the command line.

    python sample.py t2i --model FOLDER --prompt "a red fox in snow" --out samples/
    python sample.py t2v --model FOLDER --prompt "a red fox running" --out fox.mp4
    python sample.py i2v --model FOLDER --image key.png --prompt "a red fox running" --out k.mp4
    python sample.py "a prompt"         the whole text-to-video cascade (arrives with issue #6)

Every image is written as `OUT/00000.png` with `OUT/00000.json` beside it holding the settings
and library versions that made it; a video `OUT.mp4` gets `OUT.json`. The work lives in the
package (`mv2_jax.load_pipeline`, `mv2_jax.media`); this file reads the command line, checks it,
calls the pipeline and writes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp

# Run as a script from a checkout: make the package next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mv2_jax
from mv2_jax.media import VIDEO_SUFFIXES, save_images, write_video
from mv2_jax.sampling_cli import (
    UsageError,
    add_device_flags,
    add_model_flag,
    add_sampling_flags,
    build_mesh,
    check_t2i,
    sampling_kwargs,
    sampling_problems,
    versions,
)

COMING = {
    "v2v": "video → video: low-res to high-res keyframes (arrives with the V2V issue)",
    "vfi": "frame interpolation between keyframes (arrives with the VFI issue)",
}
CASCADE = (
    'python sample.py "a prompt" runs the whole cascade (T2I → I2V → V2V → VFI → mp4); it '
    "arrives with issue #6"
)


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sample.py",
        description="Sample from the MagicVideo-V2 stages (JAX/Flax).",
        epilog=f"Without a subcommand: {CASCADE}.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{t2i,t2v,i2v,v2v,vfi}")
    t2i = commands.add_parser(
        "t2i",
        help="text → image with an SD1.x / SD2.x / SDXL pipeline folder",
        description="Text → image. Writes OUT/NNNNN.png and OUT/NNNNN.json (every setting and "
        "the library versions) per image; numbering continues after files already in OUT.",
    )
    flag = t2i.add_argument
    add_model_flag(t2i)
    flag(
        "--prompt",
        action="append",
        required=True,
        metavar="TEXT",
        help="the text to draw; repeat the flag for several prompts in one batch",
    )
    flag(
        "--negative-prompt",
        action="append",
        metavar="TEXT",
        help="what to steer away from (classifier-free guidance); once for all prompts or "
        "once per --prompt (default: the empty prompt)",
    )
    add_sampling_flags(t2i, steps=50, guidance="7.5 for SD1.x/2.x and 5.0 for SDXL")
    flag("--num-images", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    add_device_flags(t2i)
    flag(
        "--out",
        default="samples",
        metavar="FOLDER",
        help="where the images and their .json settings go (default samples/)",
    )
    add_t2v_parser(commands)
    add_i2v_parser(commands)
    for name, text in COMING.items():
        commands.add_parser(name, help=f"{text}; not available yet", description=text)
    return parser


# ---------------------------------------------------------------------------- text → image


def run_t2i(args: argparse.Namespace, argv: list[str]) -> int:
    check_t2i(args)
    mesh = build_mesh(args.mesh)
    negatives = args.negative_prompt or [None]
    try:
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]
        pipe = mv2_jax.load_pipeline(args.model, dtype=dtype)
        images = pipe(
            args.prompt,
            negative_prompt=negatives if len(negatives) > 1 else negatives[0],
            num_images_per_prompt=args.num_images,
            **sampling_kwargs(args, mesh),
        )
    except (OSError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # every process holds the images; one writes them
        write_t2i(images, args, argv, mesh, getattr(pipe, "default_guidance_scale", None))
    return 0


def write_t2i(images, args: argparse.Namespace, argv: list[str], mesh, default_guidance) -> None:
    """`OUT/NNNNN.png` + `OUT/NNNNN.json` per image, then say where they went."""
    scheduler_config = Path(args.model, "scheduler", "scheduler_config.json")
    settings = {
        "model": str(Path(args.model).resolve()),
        "prompts": args.prompt,
        "num_images_per_prompt": args.num_images,
        "seed": args.seed,
        "steps": args.steps,
        "scheduler": args.scheduler,  # None: model_scheduler's
        "model_scheduler": json.loads(scheduler_config.read_text()).get("_class_name")
        if scheduler_config.is_file()
        else None,
        "guidance_scale": default_guidance if args.guidance_scale is None else args.guidance_scale,
        "height": int(images.shape[1]),
        "width": int(images.shape[2]),
        "dtype": args.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": shlex.join(["python", "sample.py", *argv]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    negatives = args.negative_prompt or [None]
    paths = save_images(images, args.out)
    for i, path in enumerate(paths):
        prompt = i // args.num_images  # the pipeline orders images prompt by prompt
        sidecar = {
            "image": path.name,
            "prompt": args.prompt[prompt],
            "negative_prompt": negatives[prompt if len(negatives) > 1 else 0],
            "index_in_batch": i,
            **settings,
        }
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(path)
    print(f"wrote {len(paths)} image(s) and their .json settings to {args.out}")


# ---------------------------------------------------------------------------- text → video


def add_t2v_parser(commands) -> None:
    t2v = commands.add_parser(
        "t2v",
        help="text → video with an AnimateDiff pipeline folder (SD1.5 + motion modules)",
        description="Text → video. Writes OUT (.mp4, .gif, or a folder of PNG frames) and "
        "OUT's name with .json (every setting and the library versions) beside it.",
    )
    add_model_flag(t2v, "an AnimateDiff (SD1.x UNet + motion modules)")
    t2v.add_argument("--prompt", required=True, metavar="TEXT", help="the text to animate")
    add_video_flags(t2v, frames_default=16)


def add_video_flags(parser: argparse.ArgumentParser, frames_default: int | None) -> None:
    """The flags text → video and image → video share (after --model and --prompt)."""
    flag = parser.add_argument
    flag(
        "--negative-prompt",
        metavar="TEXT",
        help="what to steer away from (classifier-free guidance; default: the empty prompt)",
    )
    default = frames_default or "32 (the paper's) or the model's maximum if lower"
    flag(
        "--num-frames",
        type=int,
        default=frames_default,
        metavar="N",
        help="frames to generate, 1 to the motion modules' motion_max_seq_length (32 for "
        f"AnimateDiff v2/v3, 24 for v1; default {default})",
    )
    add_sampling_flags(parser, steps=25, guidance="7.5")
    flag("--fps", type=float, default=8.0, help="frame rate written to the video (default 8)")
    flag(
        "--decode-chunk-size",
        type=int,
        default=16,
        metavar="N",
        help="frames the VAE decodes at once; lower it if decoding runs out of memory (default 16)",
    )
    add_device_flags(parser)
    flag(
        "--out",
        default="video.mp4",
        metavar="PATH",
        help="the video: .mp4 (H.264), .gif, or a path without suffix for a new folder of "
        "numbered PNG frames; the settings go to the same name with .json (a folder: its "
        "settings.json; default video.mp4)",
    )


def check_t2v(args: argparse.Namespace) -> None:
    """Every cheap check of the t2v flags, all problems reported at once."""
    problems = sampling_problems(args)
    index = Path(args.model, "model_index.json")
    if not problems and index.is_file():
        kind = json.loads(index.read_text()).get("_class_name")
        if kind in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
            problems.append(
                f"--model {args.model} is a {kind} (text → image): use `sample.py t2i`, or "
                "add motion modules with `python convert/to_flax.py FOLDER --motion-adapter "
                "MOTION_MODULE.ckpt --out DIR` and pass --model DIR"
            )
    problems += video_problems(args)
    if problems:
        raise UsageError("\n".join(problems))


def video_problems(args: argparse.Namespace) -> list[str]:
    """The cheap checks of `add_video_flags`'s flags."""
    problems = []
    if args.num_frames is not None and args.num_frames < 1:
        problems.append(f"--num-frames {args.num_frames}: needs at least 1 frame")
    if args.decode_chunk_size < 1:
        problems.append(f"--decode-chunk-size {args.decode_chunk_size}: needs at least 1")
    if not args.fps > 0:
        problems.append(f"--fps {args.fps}: must be positive")
    out = Path(args.out)
    if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
        problems.append(
            f"--out {args.out}: unsupported suffix {out.suffix!r}; use .mp4, .gif, or no "
            "suffix for a folder of PNG frames"
        )
    elif not out.suffix and out.exists() and any(out.iterdir() if out.is_dir() else [out]):
        problems.append(f"--out {args.out} exists; frames go to a new or empty folder")
    return problems


def run_t2v(args: argparse.Namespace, argv: list[str]) -> int:
    check_t2v(args)
    mesh = build_mesh(args.mesh)
    try:
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]
        pipe = mv2_jax.load_pipeline(args.model, dtype=dtype)
        videos = pipe(
            args.prompt,
            negative_prompt=args.negative_prompt,
            num_frames=args.num_frames,
            decode_chunk_size=args.decode_chunk_size,
            **sampling_kwargs(args, mesh),
        )
    except (OSError, ValueError, NotImplementedError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_video_and_settings(videos, args, argv, mesh, pipe)
    return 0


def write_video_and_settings(videos, args, argv: list[str], mesh, pipe, **extra) -> None:
    """The first video to `--out`, every setting (plus `extra`) to the JSON beside it."""
    if jax.process_index() != 0:
        return
    path = write_video(videos[0], args.out, fps=args.fps)
    settings = {
        "video": path.name,
        "model": str(Path(args.model).resolve()),
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        **extra,
        "seed": args.seed,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance_scale": args.guidance_scale
        if args.guidance_scale is not None
        else getattr(pipe, "default_guidance_scale", None),
        "num_frames": int(videos.shape[1]),
        "height": int(videos.shape[2]),
        "width": int(videos.shape[3]),
        "fps": args.fps,
        "dtype": args.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": shlex.join(["python", "sample.py", *argv]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    sidecar = path.with_suffix(".json") if path.suffix else path / "settings.json"
    sidecar.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {path} ({videos.shape[1]} frames) and its settings to {sidecar}")


# ---------------------------------------------------------------------------- image → video


def scale_or_off(text: str) -> float | None:
    """A conditioning weight: a number, or "off" (None: not computed at all)."""
    if text.lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'off'") from None


def add_i2v_parser(commands) -> None:
    from mv2_jax.pipelines.i2v import CONTROLNET_FRAMES, NOISE_PRIORS

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
    add_video_flags(i2v, frames_default=None)


def check_i2v(args: argparse.Namespace) -> None:
    """Every cheap check of the i2v flags, all problems reported at once."""
    problems = sampling_problems(args) + video_problems(args)
    if not Path(args.image).is_file():
        problems.append(f"--image {args.image}: no such file; pass the key image (png, jpg, ...)")
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
    if problems:
        raise UsageError("\n".join(problems))


def run_i2v(args: argparse.Namespace, argv: list[str]) -> int:
    check_i2v(args)
    mesh = build_mesh(args.mesh)
    from mv2_jax.media import load_image
    from mv2_jax.pipelines.loading import load_i2v_pipeline

    try:
        image = load_image(args.image)
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]
        pipe = load_i2v_pipeline(
            args.model,
            dtype,
            controlnet=args.controlnet,
            ip_adapter=args.ip_adapter,
            image_encoder=args.image_encoder,
        )
        conditioning = dict(
            reference_scale=args.reference_scale,
            controlnet_scale=args.controlnet_scale,
            controlnet_frames=args.controlnet_frames,
            ip_adapter_scale=args.ip_adapter_scale,
            noise_prior=args.noise_prior,
            noise_prior_strength=args.noise_prior_strength,
        )
        videos = pipe(
            image,
            args.prompt,
            negative_prompt=args.negative_prompt,
            num_frames=args.num_frames,
            decode_chunk_size=args.decode_chunk_size,
            **sampling_kwargs(args, mesh),
            **conditioning,
        )
    except (OSError, ValueError, NotImplementedError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_video_and_settings(
        videos, args, argv, mesh, pipe, image=str(Path(args.image).resolve()), **conditioning
    )
    return 0


# ---------------------------------------------------------------------------- main


RUNNERS = {"t2i": run_t2i, "t2v": run_t2v, "i2v": run_i2v}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in (*RUNNERS, *COMING) and not argv[0].startswith("-"):
        print(
            f"sample.py: {CASCADE}; for now make a key image with `sample.py t2i`", file=sys.stderr
        )
        return 2
    if argv[0] in COMING and not {"-h", "--help"} & set(argv):
        print(f"sample.py {argv[0]}: {COMING[argv[0]]}; not available yet", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return RUNNERS[args.command](args, argv)
    except UsageError as e:
        for line in str(e).splitlines():
            print(f"sample.py {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
