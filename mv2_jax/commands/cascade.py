"""`sample.py "a prompt"` (or `sample.py cascade "a prompt"`): the whole text-to-video cascade,
T2I → I2V → V2V → VFI, from one model folder per stage, each with its own steps, guidance,
seed and size (`stages.py`); writes the video (and, asked, the key image and keyframes) with
JSON settings."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from mv2_jax.commands.common import (
    RuntimeFlags,
    UsageError,
    build_mesh,
    output_problems,
    say,
    versions,
)
from mv2_jax.commands.session import Session
from mv2_jax.commands.stages import (
    StageRunFlags,
    add_stage_flags,
    build_cascade,
    stage_run_flags,
    stage_run_problems,
    stage_settings,
    stage_settings_record,
)
from mv2_jax.commands.video import command_line, stage_video
from mv2_jax.media import VIDEO_SUFFIXES, to_uint8
from mv2_jax.pipelines.shipped import shipped_model


@dataclass(frozen=True)
class CascadeFlags:
    prompt: str
    image: str | None
    out: str
    save_intermediates: bool
    stages: StageRunFlags

    @property
    def runtime(self) -> RuntimeFlags:
        return self.stages.runtime


def settings(args: argparse.Namespace) -> CascadeFlags:
    return CascadeFlags(
        prompt=args.prompt,
        image=args.image,
        out=args.out,
        save_intermediates=args.save_intermediates,
        stages=stage_run_flags(args),
    )


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


def check(flags: CascadeFlags) -> None:
    """Every cheap check of the flags, all problems at once (sizes are checked by the plan)."""
    problems = stage_run_problems(flags.stages, flags.image)
    if flags.image is not None and not Path(flags.image).is_file():
        problems.append(f"--image {flags.image}: no such file")
    if Path(flags.out).suffix.lower() not in VIDEO_SUFFIXES:
        problems.append(f"--out {flags.out}: end it in .mp4 or .gif")
    else:
        problems += output_problems("--out", flags.out, folder=False)
    if problems:
        raise UsageError("\n".join(problems))


def outside_the_shipped_world(flags: CascadeFlags) -> str | None:
    """A note when the shipped models run a prompt they were not trained for (it still runs)."""
    shipped = shipped_model("i2v")
    if shipped is None or flags.stages.models["i2v"] != str(shipped):
        return None
    from mv2_jax.data.shapes import parse_prompt

    try:
        parse_prompt(flags.prompt)
    except ValueError as e:
        return (
            f"note: {e}. The shipped models know one coloured shape moving left, right, up or "
            "down (docs/shapes.md); for other subjects give --t2i-model, --i2v-model and "
            "--v2v-model."
        )
    return None


def run(flags: CascadeFlags, session: Session) -> int:
    import jax

    from mv2_jax.media import load_image

    note = outside_the_shipped_world(flags)
    if note:
        say(note)
    stages = flags.stages
    mesh = build_mesh(stages.device.mesh)
    key_image = None if flags.image is None else load_image(flags.image)
    cascade = build_cascade(stages, flags.image, session.progress)
    settings = stage_settings(stages)
    call = dict(key_image=key_image, num_frames=stages.num_frames, factor=stages.factor)
    plan = cascade.plan(**call, **settings)  # every size problem before the first stage runs
    session.progress("compiling or restoring the compiled programs of every stage")
    out = cascade(
        flags.prompt,
        negative_prompt=stages.negative_prompt,
        **call,
        **settings,
        vfi_batch_size=stages.vfi_batch_size,
        mesh=mesh,
        progress=stages.device.step_progress,
        guidance_batching=stages.device.guidance_batching,
    )
    if jax.process_index() == 0:
        write_outputs(out, plan, settings, flags, session, mesh)
    return 0


def write_outputs(out, plan, settings: dict, flags: CascadeFlags, session: Session, mesh) -> None:
    """The video at `--out`, its JSON settings beside it, and the intermediates when asked; all
    staged, then given their names together."""
    from PIL import Image

    from mv2_jax.media import write_video

    stages, path = flags.stages, Path(flags.out)
    written = {"video": path.name}
    if flags.save_intermediates:
        stem = path.with_suffix("")
        key = Path(f"{stem}.key.png")
        Image.fromarray(to_uint8(out.key_image, "key image")).save(session.guard.stage(key))
        written["key_image"] = key.name
        keyframe_fps = stages.fps / max(plan.factor, 1)
        for name, video in (("keyframes", out.keyframes), ("upscaled", out.upscaled)):
            if video is not None:
                target = Path(f"{stem}.{name}.mp4")
                write_video(video, session.guard.stage(target), fps=keyframe_fps)
                written[name] = target.name
    record = {
        **written,
        "prompt": flags.prompt,
        "negative_prompt": stages.negative_prompt,
        "models": dict(stages.models),
        "loras": {
            stage: [str(lora) for lora in given.lora]
            for stage, given in stages.stages.items()
            if given.lora
        },
        "key_image_file": flags.image,
        "plan": asdict(plan),
        "stages": stage_settings_record(settings),
        "frames": int(out.frames.shape[0]),
        "fps": stages.fps,
        "dtype": stages.device.dtype,
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": command_line(session),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    stage_video(session, out.frames, flags.out, stages.fps, record)
    session.guard.commit()
    sidecar = path.with_suffix(".json")
    print(f"wrote {path} ({out.frames.shape[0]} frames) and its settings to {sidecar}")
