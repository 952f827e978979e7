"""`sample.py "a prompt"` (or `sample.py cascade "a prompt"`): the whole text-to-video cascade,
T2I → I2V → V2V → VFI, from one model folder per stage, each with its own steps, guidance,
seed and size; writes the video (and, asked, the key image and keyframes) with JSON settings."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import jax
from PIL import Image

from mv2_jax.commands.common import (
    SCHEDULERS,
    UsageError,
    add_device_flags,
    build_mesh,
    check_model_folder,
    dtype_of,
    versions,
)
from mv2_jax.commands.i2v import (
    add_conditioning_flags,
    component_kwargs,
    conditioning_kwargs,
    conditioning_problems,
)
from mv2_jax.media import VIDEO_SUFFIXES, to_uint8, write_video
from mv2_jax.pipelines.shipped import SHIPPED_SAMPLING, shipped_model

SKIPPABLE = ("t2i", "v2v", "vfi")
DIFFUSION_STAGES = {"t2i": 30, "i2v": 25, "v2v": 20}  # stage → default steps


def add_parser(commands) -> None:
    cascade = commands.add_parser(
        "cascade",
        help='the whole cascade, also `sample.py "a prompt"`: text → key image → keyframes → '
        "high-res keyframes → ×k frames → video",
        description="MagicVideo-V2's cascade: T2I makes a key image, I2V animates it into "
        "keyframes, V2V raises their resolution, VFI puts k−1 frames between neighbours. Each "
        "stage has its own model folder and --STAGE-steps/-guidance-scale/-seed/-scheduler/"
        "-size flags; --skip leaves a stage out (T2I is also skipped by --image).",
    )
    flag = cascade.add_argument
    flag("prompt", metavar="PROMPT", help="what the video shows")
    flag("--image", metavar="FILE", help="a key image to start from instead of T2I")
    add_stage_flags(cascade)
    flag("--out", default="video.mp4", metavar="PATH", help="the video: .mp4 or .gif")
    flag(
        "--save-intermediates",
        action="store_true",
        help="also write OUT's name + .key.png, .keyframes.mp4 and .upscaled.mp4",
    )


def add_stage_flags(parser) -> None:
    """The models and every stage's settings (all flags but the prompt, the key image and the
    outputs): `evaluate.py` takes them too."""
    flag = parser.add_argument
    flag("--negative-prompt", metavar="TEXT", help="what to steer away from (every stage)")
    flag(
        "--t2i-model",
        metavar="FOLDER",
        help="SD1.x / SD2.x / SDXL pipeline folder (T2I); with no model flag at all, the "
        "shipped shapes-world models run every stage (docs/shapes.md)",
    )
    flag("--i2v-model", metavar="FOLDER", help="AnimateDiff or ImageToVideoPipeline folder")
    flag(
        "--v2v-model",
        metavar="FOLDER",
        help="VideoToVideoPipeline folder (default: the I2V model in training-free SDEdit mode)",
    )
    flag("--vfi-model", metavar="FOLDER", help="frame interpolator (default: the shipped one)")
    flag(
        "--skip",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"leave a stage out: {', '.join(SKIPPABLE)} (repeat or comma-separate)",
    )
    flag("--seed", type=int, default=0, metavar="N", help="every stage's seed unless given")
    for stage, steps in DIFFUSION_STAGES.items():
        name = stage.upper()
        shipped = SHIPPED_SAMPLING[f"{stage}_steps"]
        flag(
            f"--{stage}-steps",
            type=int,
            metavar="N",
            help=f"{name} denoising steps (default {steps}; {shipped} with the shipped models)",
        )
        guidance = SHIPPED_SAMPLING[f"{stage}_guidance_scale"]
        flag(
            f"--{stage}-guidance-scale",
            type=float,
            metavar="W",
            help=f"{name} guidance weight (default: the model's; {guidance} with the shipped "
            "models)",
        )
        flag(f"--{stage}-seed", type=int, metavar="N", help=f"{name} seed (default --seed)")
        flag(
            f"--{stage}-scheduler",
            type=str.lower,
            metavar="NAME",
            help=f"{name} sampling algorithm (as --scheduler)",
        )
        flag(f"--{stage}-size", type=_size, metavar="HxW", help=f"{name} size (default: model's)")
    flag("--num-frames", type=int, metavar="N", help="keyframes (default 32 or the model's max)")
    flag(
        "--noise-level",
        type=int,
        default=20,
        metavar="L",
        help="V2V noise-augmentation level of the low-res input, 0-1000 (default 20)",
    )
    flag("--strength", type=float, metavar="S", help="V2V SDEdit strength in (0, 1]")
    flag(
        "--vae-tile-size",
        type=int,
        metavar="PX",
        help="V2V: VAE encode/decode in overlapping PX² tiles (e.g. 512) to bound memory",
    )
    flag(
        "--factor",
        type=int,
        default=3,
        metavar="K",
        help="VFI: k, frames per keyframe gap; 1 adds none (default 3)",
    )
    flag(
        "--vfi-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="VFI: new frames per batch (default 8)",
    )
    add_conditioning_flags(parser)
    add_device_flags(parser)
    flag("--fps", type=float, default=24.0, help="frame rate of the final video (default 24)")


def _size(text: str) -> tuple[int, int]:
    try:
        height, _, width = text.lower().partition("x")
        return int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW, e.g. 576x576") from None


def skipped(args: argparse.Namespace) -> set[str]:
    stages = {s.strip() for value in args.skip for s in value.split(",") if s.strip()}
    if args.image is not None:
        stages.add("t2i")
    return stages


def use_shipped_models(args: argparse.Namespace) -> None:
    """No model flags at all: the shipped shapes-world T2I, I2V and V2V (one set; a model of
    your own for any stage means choosing the others too)."""
    flags = ("t2i_model", "i2v_model", "v2v_model")
    if any(getattr(args, flag) is not None for flag in flags):
        return
    folders = {flag: shipped_model(flag.split("_")[0]) for flag in flags}
    if not any(folders.values()):
        return
    for flag, folder in folders.items():
        if folder is not None:
            setattr(args, flag, str(folder))
    for flag, value in SHIPPED_SAMPLING.items():  # where the command line leaves them open
        if getattr(args, flag) is None:
            setattr(args, flag, value)


def outside_the_shipped_world(args: argparse.Namespace) -> str | None:
    """A note when the shipped models run a prompt they were not trained for (it still runs)."""
    shipped = shipped_model("i2v")
    if shipped is None or args.i2v_model != str(shipped):
        return None
    from mv2_jax.data.shapes import parse_prompt

    try:
        parse_prompt(args.prompt)
    except ValueError as e:
        return (
            f"note: {e}. The shipped models know one coloured shape moving left, right, up or "
            "down (docs/shapes.md); for other subjects give --t2i-model, --i2v-model and "
            "--v2v-model."
        )
    return None


def sampler_problems(args: argparse.Namespace, stage: str) -> list[str]:
    """What is wrong with `stage`'s --STAGE-scheduler and --STAGE-steps."""
    problems = []
    scheduler = getattr(args, f"{stage}_scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        problems.append(f"--{stage}-scheduler {scheduler!r}: choose from {SCHEDULERS}")
    steps = getattr(args, f"{stage}_steps")
    if steps is not None and steps < 1:
        problems.append(f"--{stage}-steps: at least 1")
    return problems


def check(args: argparse.Namespace) -> None:
    """Every cheap check of the flags, all problems at once (sizes are checked by the plan)."""
    use_shipped_models(args)
    skip = skipped(args)
    problems = [f"--skip {s}: choose from {', '.join(SKIPPABLE)}" for s in skip - {*SKIPPABLE}]
    problems += conditioning_problems(args)
    folders = {"i2v_model": True, "t2i_model": "t2i" not in skip, "v2v_model": False}
    for name, required in folders.items():
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if value is None:
            if required:
                why = (
                    "with a model of your own for another stage, choose this one's too"
                    if shipped_model(name.split("_")[0])
                    else "this install ships no model for it (mv2_jax/assets)"
                )
                problems.append(f"{flag}: needed; {why}")
            continue
        try:
            check_model_folder(value)
        except UsageError as e:
            problems.append(str(e).replace("--model", flag))
    if args.image is not None and not Path(args.image).is_file():
        problems.append(f"--image {args.image}: no such file")
    for stage in DIFFUSION_STAGES:
        problems += sampler_problems(args, stage)
        size = getattr(args, f"{stage}_size")
        if size is not None and (min(size) < 8 or size[0] % 8 or size[1] % 8):
            problems.append(f"--{stage}-size {size[0]}x{size[1]}: use positive multiples of 8")
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        problems.append(f"--strength {args.strength}: must be in (0, 1]")
    if Path(args.out).suffix.lower() not in VIDEO_SUFFIXES:
        problems.append(f"--out {args.out}: end it in .mp4 or .gif")
    if problems:
        raise UsageError("\n".join(problems))


def build_cascade(args: argparse.Namespace):
    """The cascade of the flags' model folders (loaded here; the slow part before sampling)."""
    import mv2_jax
    from mv2_jax.pipelines.cascade import TextToVideoCascade
    from mv2_jax.pipelines.loading import load_i2v_pipeline, load_v2v_pipeline
    from mv2_jax.pipelines.vfi import load_vfi_pipeline

    skip, dtype = skipped(args), dtype_of(args)
    parts = component_kwargs(args)
    return TextToVideoCascade(
        image_to_video=load_i2v_pipeline(args.i2v_model, dtype, **parts),
        text_to_image=None if "t2i" in skip else mv2_jax.load_pipeline(args.t2i_model, dtype),
        video_to_video=None
        if "v2v" in skip
        else load_v2v_pipeline(args.v2v_model or args.i2v_model, dtype, **parts),
        interpolator=None if "vfi" in skip else load_vfi_pipeline(args.vfi_model, dtype),
    )


def stage_settings(args: argparse.Namespace) -> dict:
    """`{stage: StageSettings}` of the per-stage flags."""
    from mv2_jax.pipelines.cascade import StageSettings

    conditioning = conditioning_kwargs(args)
    extra = {
        "t2i": {},
        "i2v": conditioning,
        # the latent noise prior starts I2V from the key image; V2V starts from its input
        "v2v": {
            **{k: v for k, v in conditioning.items() if not k.startswith("noise_prior")},
            "noise_level": args.noise_level,
            "strength": args.strength,
            "vae_tile_size": args.vae_tile_size,
        },
    }
    settings = {}
    for stage in DIFFUSION_STAGES:
        size = getattr(args, f"{stage}_size") or (None, None)
        seed = getattr(args, f"{stage}_seed")
        settings[stage] = StageSettings(
            steps=_given(getattr(args, f"{stage}_steps"), DIFFUSION_STAGES[stage]),
            guidance_scale=getattr(args, f"{stage}_guidance_scale"),
            seed=args.seed if seed is None else seed,
            scheduler=getattr(args, f"{stage}_scheduler"),
            height=size[0],
            width=size[1],
            extra=extra[stage],
        )
    return settings


def _given(value, default):
    return default if value is None else value


def run(args: argparse.Namespace, argv: list[str]) -> int:
    check(args)
    note = outside_the_shipped_world(args)
    if note:
        print(note, file=sys.stderr)
    mesh = build_mesh(args.mesh)
    from mv2_jax.media import load_image

    key_image = None if args.image is None else load_image(args.image)
    cascade = build_cascade(args)
    settings = stage_settings(args)
    call = dict(key_image=key_image, num_frames=args.num_frames, factor=args.factor, **settings)
    plan = cascade.plan(**call)  # every size problem before the first stage runs
    out = cascade(
        args.prompt,
        args.negative_prompt,
        **call,
        vfi_batch_size=args.vfi_batch_size,
        mesh=mesh,
        progress=args.step_progress,
    )
    if jax.process_index() == 0:
        write_outputs(out, plan, settings, args, argv, mesh)
    return 0


def write_outputs(out, plan, settings, args, argv: list[str], mesh) -> None:
    """The video at `--out`, its JSON settings beside it, and the intermediates when asked."""
    path = write_video(out.frames, args.out, fps=args.fps)
    written = {"video": path.name}
    if args.save_intermediates:
        stem = path.with_suffix("")
        key = Path(f"{stem}.key.png")
        Image.fromarray(to_uint8(out.key_image, "key image")).save(key)
        written["key_image"] = key.name
        keyframe_fps = args.fps / max(plan.factor, 1)
        for name, video in (("keyframes", out.keyframes), ("upscaled", out.upscaled)):
            if video is not None:
                written[name] = write_video(video, f"{stem}.{name}.mp4", fps=keyframe_fps).name
    record = {
        **written,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "models": {s: getattr(args, f"{s}_model") for s in ("t2i", "i2v", "v2v", "vfi")},
        "key_image_file": args.image,
        "plan": asdict(plan),
        "stages": {s: {**asdict(v), "extra": dict(v.extra)} for s, v in settings.items()},
        "frames": int(out.frames.shape[0]),
        "fps": args.fps,
        "dtype": args.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": shlex.join(["python", "sample.py", *argv]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path} ({out.frames.shape[0]} frames) and its settings to {sidecar}")
