"""The shapes-world quality evaluation (issue 7): generate a video for every prompt × seed with
the cascade, read colour, shape and motion back from its pixels, and report accuracy,
first-frame fidelity, smoothness and frame-interpolation PSNR, split into held-out and
training combinations.

    python evaluate.py --t2i-model runs/shapes/export/t2i --i2v-model runs/shapes/export/i2v \\
        --v2v-model runs/shapes/export/v2v --out runs/shapes/eval
    python evaluate.py --stages t2i --t2i-model runs/shapes/export/t2i --out runs/shapes/eval-t2i
    python evaluate.py ... --ablate appearance --out runs/shapes/eval-no-appearance

The model, stage and I2V conditioning flags are `sample.py cascade`'s (mv2_jax/commands/
cascade.py adds them here too). Writes OUT/results.jsonl as prompts finish (rerun the same
command to go on after a stop), then OUT/results.json, OUT/results.md and OUT/samples/.
The metrics are described in docs/shapes.md ("Evaluation"); the logic is mv2_jax/evaluation.
Installed, the same program is `mv2-evaluate`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from mv2_jax.commands import cascade as cascade_command
from mv2_jax.commands.common import (
    UsageError,
    build_mesh,
    check_model_folder,
    dtype_of,
    run_reporting_errors,
    use_compilation_cache,
    versions,
)
from mv2_jax.evaluation.run import ABLATIONS
from mv2_jax.evaluation.shapes import PROMPT_SETS, select_prompts


def prompt_set(text: str) -> str | int:
    if text in PROMPT_SETS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give {', '.join(PROMPT_SETS)} or a count (1-84)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    cascade_command.add_stage_flags(group)
    parser.set_defaults(prompt=None, image=None, save_intermediates=False)
    return parser


def check(args: argparse.Namespace) -> None:
    """Every cheap check, all problems reported together (no model flags: the shipped set,
    filled into `args`)."""
    cascade_command.use_shipped_models(args)
    problems = []
    try:
        select_prompts(args.prompts)
    except ValueError as e:
        problems.append(f"--{e}")
    for name, least in (("seeds", 1), ("vfi_clips", 0), ("examples", 0)):
        if getattr(args, name) < least:
            problems.append(f"--{name.replace('_', '-')}: at least {least}")
    if args.stages == "cascade":
        if "t2i" in cascade_command.skipped(args):
            problems.append("--skip t2i: the evaluation makes its key images with T2I")
        try:  # the cascade's own checks (its --out is a video; ours a folder)
            cascade_command.check(argparse.Namespace(**{**vars(args), "out": "video.mp4"}))
        except UsageError as e:
            problems += str(e).splitlines()
    else:
        problems += _t2i_problems(args)
        if args.ablate:
            problems.append("--ablate: I2V ablations need --stages cascade")
    if problems:
        raise UsageError("\n".join(dict.fromkeys(problems)))


def _t2i_problems(args: argparse.Namespace) -> list[str]:
    if args.t2i_model is None:
        return ["--t2i-model: needed"]
    problems = []
    try:
        check_model_folder(args.t2i_model)
    except UsageError as e:
        problems.append(str(e).replace("--model", "--t2i-model"))
    return problems + cascade_command.sampler_problems(args, "t2i")


def settings_of(args: argparse.Namespace, stage_settings: dict) -> dict:
    """What the results depend on: a rerun into the same folder must match it."""
    cascade = args.stages == "cascade"
    skip = cascade_command.skipped(args)
    models = {"t2i": _resolved(args.t2i_model)}
    if cascade:
        models["i2v"] = _resolved(args.i2v_model)
        if "v2v" not in skip:
            models["v2v"] = _resolved(args.v2v_model or args.i2v_model)
        if "vfi" not in skip:
            models["vfi"] = _resolved(args.vfi_model) if args.vfi_model else "shipped"
    ran = [s for s in stage_settings if s in models]
    settings = {
        "stages": args.stages,
        "models": models,
        "stage_settings": {s: asdict(stage_settings[s]) for s in ran},
        "negative_prompt": args.negative_prompt,
        "dtype": args.dtype,
    }
    if cascade:
        settings.update(num_frames=args.num_frames, factor=args.factor)
        settings["ablate"] = sorted(set(args.ablate))
    return settings


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from mv2_jax.evaluation.results import ResultsLog, SettingsMismatch, write_reports
    from mv2_jax.evaluation.run import ablate, evaluate_samples, evaluate_vfi

    check(args)
    combinations = select_prompts(args.prompts)
    mesh = build_mesh(args.mesh)
    stage_settings = ablate(cascade_command.stage_settings(args), args.ablate)
    settings = settings_of(args, stage_settings)
    try:
        log = ResultsLog(args.out, settings)
    except SettingsMismatch as e:
        raise UsageError(f"--out {e}") from None
    models = _Models(args, stage_settings, mesh)
    try:
        samples = evaluate_samples(
            models.sample,
            combinations,
            args.seeds,
            log,
            examples=args.examples,
            example_format=args.example_format,
            fps=args.fps,
        )
        vfi = []
        if "vfi" in settings["models"] and args.vfi_clips and args.factor > 1:
            vfi = evaluate_vfi(
                models.interpolate, log, clips=args.vfi_clips, sizes=models.vfi_sizes
            )
    except KeyboardInterrupt:
        print(
            f"\nstopped: {len(log)} finished records are in {log.folder}/results.jsonl; "
            "run the same command to go on",
            file=sys.stderr,
        )
        return 130
    about = {
        "command": shlex.join(["python", "evaluate.py", *argv]),
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

    def __init__(self, args: argparse.Namespace, stage_settings: dict, mesh):
        self.args, self.stage_settings, self.mesh = args, stage_settings, mesh
        self._sampler = None

    def sampler(self):
        if self._sampler is None:
            from mv2_jax.evaluation.run import CascadeSampler

            args = self.args
            common = dict(
                settings=self.stage_settings, negative_prompt=args.negative_prompt, mesh=self.mesh
            )
            if args.stages == "t2i":
                import mv2_jax

                pipe = mv2_jax.load_pipeline(args.t2i_model, dtype_of(args))
                self._sampler = CascadeSampler(text_to_image=pipe, **common)
            else:
                cascade = cascade_command.build_cascade(args)
                cascade.report = lambda line: None  # the progress bar says where it is
                self._sampler = CascadeSampler(
                    cascade=cascade,
                    num_frames=args.num_frames,
                    factor=args.factor,
                    vfi_batch_size=args.vfi_batch_size,
                    **common,
                )
        return self._sampler

    def sample(self, combination, seed_index):
        return self.sampler()(combination, seed_index)

    def vfi_sizes(self) -> dict:
        """The keyframe count, frame size and factor the cascade's VFI works at."""
        sampler = self.sampler()
        plan = sampler.cascade.plan(
            num_frames=self.args.num_frames, factor=self.args.factor, **self.stage_settings
        )
        size = plan.upscaled_size or plan.keyframe_size
        return {"num_frames": plan.num_frames, "size": size, "factor": plan.factor}

    def interpolate(self, videos):
        return self.sampler().cascade.interpolator(
            videos, factor=self.args.factor, batch_size=self.args.vfi_batch_size
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    use_compilation_cache(args.compilation_cache)
    return run_reporting_errors("evaluate.py", run, args, argv)


if __name__ == "__main__":
    sys.exit(main())
