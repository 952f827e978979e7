"""The shapes-world quality evaluation (issue 7): generate a video for every prompt × seed with
the cascade, read colour, shape and motion back from its pixels, and report accuracy,
first-frame fidelity, smoothness and frame-interpolation PSNR, split into held-out and
training combinations.

    python evaluate.py --t2i-model runs/shapes/export/t2i --i2v-model runs/shapes/export/i2v \\
        --v2v-model runs/shapes/export/v2v --out runs/shapes/eval
    python evaluate.py --stages t2i --t2i-model runs/shapes/export/t2i --out runs/shapes/eval-t2i
    python evaluate.py ... --ablate appearance --out runs/shapes/eval-no-appearance

The model, stage and I2V conditioning flags are `sample.py cascade`'s (mv2_jax/commands/
stages.py adds them here too). Writes OUT/results.jsonl as prompts finish (rerun the same
command to go on after a stop), then OUT/results.json, OUT/results.md and OUT/samples/.
The metrics are described in docs/shapes.md ("Evaluation"); the logic is mv2_jax/evaluation.
Installed, the same program is `mv2-evaluate`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from mv2_jax.commands import stages as stage_flags
from mv2_jax.commands.common import (
    OneLineParser,
    RuntimeFlags,
    UsageError,
    build_mesh,
    model_folder_problems,
    output_problems,
    versions,
)
from mv2_jax.commands.lora_flags import apply_loras
from mv2_jax.commands.session import Session, run_command
from mv2_jax.commands.stages import StageRunFlags
from mv2_jax.commands.video import command_line
from mv2_jax.dtypes import parse_dtype
from mv2_jax.evaluation.run import ABLATIONS
from mv2_jax.evaluation.shapes import PROMPT_SETS, select_prompts


@dataclass(frozen=True)
class EvaluateFlags:
    out: str
    prompts: str | int
    seeds: int
    stages: str  # "t2i" or "cascade"
    ablate: tuple[str, ...]
    vfi_clips: int
    examples: int
    example_format: str
    cascade: StageRunFlags

    @property
    def runtime(self) -> RuntimeFlags:
        return self.cascade.runtime


def prompt_set(text: str) -> str | int:
    if text in PROMPT_SETS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give {', '.join(PROMPT_SETS)} or a count (1-84)"
        ) from None


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="Seed k of --seeds K adds k to every stage's seed (--seed, --STAGE-seed). "
        "A rerun with the same --out skips finished prompts; it must use the same models "
        "and settings (more prompts or seeds are fine).",
    )
    flag = parser.add_argument
    flag("--out", required=True, metavar="DIR", help="where results and samples go")
    flag(
        "--prompts",
        type=prompt_set,
        default="all",
        metavar="WHICH",
        help="captions of (colour, shape, motion) combinations: heldout (the 12 with a pair "
        "never seen in training), train (the other 72), all (84), or a count N: a fixed, "
        "balanced subset with ⌈N/4⌉ held-out ones (default all)",
    )
    flag("--seeds", type=int, default=1, metavar="K", help="samples per prompt (default 1)")
    flag(
        "--stages",
        choices=("t2i", "cascade"),
        default="cascade",
        help="t2i: key images only (colour and shape); cascade: every stage (default)",
    )
    flag(
        "--ablate",
        action="append",
        default=[],
        choices=tuple(ABLATIONS),
        help="switch one I2V conditioning off, for the I2V stage only: appearance (reference "
        "attention), controlnet, noise-prior (latent noise prior); repeat for more",
    )
    flag(
        "--vfi-clips",
        type=int,
        default=8,
        metavar="N",
        help="world clips (half of them held-out pairs) for the frame-interpolation PSNR, "
        "at the V2V size; 0 skips it (default 8)",
    )
    flag(
        "--examples",
        type=int,
        default=4,
        metavar="N",
        help="write the videos of N prompts (seed 0) to OUT/samples (default 4)",
    )
    flag("--example-format", choices=("mp4", "gif"), default="mp4", help="(default mp4)")
    group = parser.add_argument_group(
        "models and stages", "as `sample.py cascade` takes them (its --help says more)"
    )
    stage_flags.add_stage_flags(group)
    return parser


def settings(args: argparse.Namespace) -> EvaluateFlags:
    return EvaluateFlags(
        out=args.out,
        prompts=args.prompts,
        seeds=args.seeds,
        stages=args.stages,
        ablate=tuple(args.ablate),
        vfi_clips=args.vfi_clips,
        examples=args.examples,
        example_format=args.example_format,
        cascade=stage_flags.stage_run_flags(args),
    )


def check(flags: EvaluateFlags) -> None:
    """Every cheap check, all problems reported together."""
    problems = []
    try:
        select_prompts(flags.prompts)
    except ValueError as e:
        problems.append(f"--{e}")
    for flag, value, least in (
        ("--seeds", flags.seeds, 1),
        ("--vfi-clips", flags.vfi_clips, 0),
        ("--examples", flags.examples, 0),
    ):
        if value < least:
            problems.append(f"{flag}: at least {least}")
    problems += output_problems("--out", flags.out, folder=True)
    cascade = flags.cascade
    if flags.stages == "cascade":
        if "t2i" in cascade.skipped(None):
            problems.append("--skip t2i: the evaluation makes its key images with T2I")
        problems += stage_flags.stage_run_problems(cascade, None)
    else:
        t2i_model = cascade.models["t2i"]
        if t2i_model is None:
            problems.append("--t2i-model: needed")
        else:
            problems += model_folder_problems(t2i_model, "--t2i-model")
        problems += stage_flags.sampler_problems(cascade.stages["t2i"], "t2i")
        if flags.ablate:
            problems.append("--ablate: I2V ablations need --stages cascade")
    if problems:
        raise UsageError("\n".join(dict.fromkeys(problems)))


def settings_of(flags: EvaluateFlags, stage_settings: dict) -> dict:
    """What the results depend on: a rerun into the same folder must match it."""
    run_cascade = flags.stages == "cascade"
    cascade = flags.cascade
    skip = cascade.skipped(None)
    models = {"t2i": _resolved(cascade.models["t2i"])}
    if run_cascade:
        models["i2v"] = _resolved(cascade.models["i2v"])
        if "v2v" not in skip:
            models["v2v"] = _resolved(cascade.models["v2v"] or cascade.models["i2v"])
        if "vfi" not in skip:
            vfi = cascade.models["vfi"]
            models["vfi"] = _resolved(vfi) if vfi else "shipped"
    ran = [s for s in stage_settings if s in models]
    settings = {
        "stages": flags.stages,
        "models": models,
        "stage_settings": {s: asdict(stage_settings[s]) for s in ran},
        "negative_prompt": cascade.negative_prompt,
        "dtype": cascade.device.dtype,
    }
    loras = {s: [str(lora) for lora in cascade.stages[s].lora] for s in ran
             if cascade.stages[s].lora}  # fmt: skip
    if loras:  # (only then: result folders made without LoRAs keep matching)
        settings["loras"] = loras
    if run_cascade:
        settings.update(num_frames=cascade.num_frames, factor=cascade.factor)
        settings["ablate"] = sorted(set(flags.ablate))
    return settings


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def run(flags: EvaluateFlags, session: Session) -> int:
    from mv2_jax.evaluation.results import ResultsLog, SettingsMismatch, write_reports
    from mv2_jax.evaluation.run import ablate, evaluate_samples, evaluate_vfi

    combinations = select_prompts(flags.prompts)
    cascade = flags.cascade
    mesh = build_mesh(cascade.device.mesh)
    stage_settings = ablate(stage_flags.stage_settings(cascade), flags.ablate)
    settings = settings_of(flags, stage_settings)
    try:
        log = ResultsLog(flags.out, settings)
    except SettingsMismatch as e:
        raise UsageError(f"--out {e}") from None
    models = _Models(flags, stage_settings, mesh, session)
    try:
        samples = evaluate_samples(
            models.sample,
            combinations,
            flags.seeds,
            log,
            examples=flags.examples,
            example_format=flags.example_format,
            fps=cascade.fps,
        )
        vfi = []
        if "vfi" in settings["models"] and flags.vfi_clips and cascade.factor > 1:
            vfi = evaluate_vfi(
                models.interpolate, log, clips=flags.vfi_clips, sizes=models.vfi_sizes
            )
    except KeyboardInterrupt:
        print(
            f"\nstopped: {len(log)} finished records are in {log.folder}/results.jsonl; "
            "run the same command to go on",
            file=sys.stderr,
        )
        return 130
    about = {
        "command": command_line(session, "evaluate.py"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    write_reports(log.folder, settings, samples, vfi, about=about)
    print((log.folder / "results.md").read_text())
    print(
        f"wrote {log.folder}/results.json, results.md ({len(samples)} samples, "
        f"{len(vfi)} VFI clips)"
    )
    return 0


class _Models:
    """The pipelines, loaded at the first sample that needs them (a rerun with every record
    finished only rewrites the reports)."""

    def __init__(self, flags: EvaluateFlags, stage_settings: dict, mesh, session: Session):
        self.flags, self.stage_settings, self.mesh = flags, stage_settings, mesh
        self.session = session
        self._sampler = None

    def sampler(self):
        if self._sampler is None:
            from mv2_jax.evaluation.run import CascadeSampler

            flags = self.flags.cascade
            common = dict(
                settings=self.stage_settings,
                negative_prompt=flags.negative_prompt,
                mesh=self.mesh,
                guidance_batching=flags.device.guidance_batching,
            )
            if self.flags.stages == "t2i":
                import mv2_jax

                self.session.progress(f"loading the T2I model {flags.models['t2i']}")
                dtype = parse_dtype(flags.device.dtype)
                pipe = mv2_jax.load_pipeline(flags.models["t2i"], dtype=dtype)
                apply_loras(pipe, flags.stages["t2i"].lora, self.session.progress)
                self._sampler = CascadeSampler(text_to_image=pipe, **common)
            else:
                cascade = stage_flags.build_cascade(flags, None, self.session.progress)
                cascade.report = lambda line: None  # the progress bar says where it is
                self._sampler = CascadeSampler(
                    cascade=cascade,
                    num_frames=flags.num_frames,
                    factor=flags.factor,
                    vfi_batch_size=flags.vfi_batch_size,
                    **common,
                )
            self.session.progress("evaluating", reminders=False)  # its bar shows it
        return self._sampler

    def sample(self, combination, seed_index):
        return self.sampler()(combination, seed_index)

    def vfi_sizes(self) -> dict:
        """The keyframe count, frame size and factor the cascade's VFI works at."""
        sampler, flags = self.sampler(), self.flags.cascade
        plan = sampler.cascade.plan(
            num_frames=flags.num_frames, factor=flags.factor, **self.stage_settings
        )
        size = plan.upscaled_size or plan.keyframe_size
        return {"num_frames": plan.num_frames, "size": size, "factor": plan.factor}

    def interpolate(self, videos):
        flags = self.flags.cascade
        return self.sampler().cascade.interpolator(
            videos, factor=flags.factor, batch_size=flags.vfi_batch_size
        )


def main(argv: list[str] | None = None) -> int:
    """`evaluate.py ARGS` and `mv2-evaluate ARGS`."""
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    program = sys.modules[__name__]  # this module: settings, check, run
    # Ctrl-C stops between prompts with a note on how to go on (the log keeps finished ones).
    return run_command("evaluate.py", program, args, argv, started, watch_interrupts=False)


if __name__ == "__main__":
    sys.exit(main())
