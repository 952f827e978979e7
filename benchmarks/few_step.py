"""What few-step sampling saves (issue 22): the README's first command on the shipped cascade
with the teachers' settings (`--teachers`) against the few-step default (the T2I teacher by
DPM-Solver++(2M) in 8 steps, the distilled I2V and V2V students by LCM), or against students
of your own (LoRA files, `--STAGE-scheduler lcm`, a few unguided steps); and one distillation
training step against a plain training step of the same stage, batch and LoRA.

Part `cascade`: `sample.py "a red circle moving right"` in fresh processes, cold (an empty
compilation cache) then warm (the same cache), with `--timings`; a table of UNet calls per
video (the progress lines' counts: steps run, a guided step counted twice) and seconds per
phase, teacher and few-step side by side. With `--STAGE-lora`, a stage without one samples as
the teacher.

Part `steps`: `train.py`'s loop (`mv2_jax.training.trainer.train`, each run in its own process)
for `--steps` steps of configs/lcd.py's variant and of the same config without its `lcd`
section (the stage's ordinary denoising loss on the same LoRA, batch and data); the median
`seconds_per_step` of its metrics after the first logged window (compilation excluded).

    python benchmarks/few_step.py                          # both parts, the shipped default
    python benchmarks/few_step.py cascade --t2i-lora runs/lcd/t2i_lora --student-steps 4
    python benchmarks/few_step.py steps --variants shapes_t2i --steps 40
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))
from common import machine, table  # noqa: E402
from first_run import run_once, shortened  # noqa: E402

STAGES = ("t2i", "i2v", "v2v")
CALLS = re.compile(r"^\[\d+/\d+\] (\w+): .*, (\d+) UNet calls$")
# the data the shapes variants distil on (docs/shapes.md "Few-step students"): the world's
# images and clips, decoded as they are read
DATA = {"t2i": "runs/shapes/data/image64", "i2v": "runs/shapes/data/video128"}


def student_flags(loras: dict[str, str | None], steps: int) -> list[str]:
    """The cascade flags of the few-step arm: each stage with a LoRA samples it with the LCM
    scheduler, `steps` steps, no guidance."""
    flags = []
    for stage, lora in loras.items():
        if lora:
            flags += [f"--{stage}-lora", lora, f"--{stage}-scheduler", "lcm"]
            flags += [f"--{stage}-steps", str(steps), f"--{stage}-guidance-scale", "1"]
    return flags


def unet_calls(phases: list[tuple[str, float]]) -> dict[str, int]:
    """`{stage: UNet calls}` from the stages' progress lines."""
    found = (CALLS.match(line) for line, _ in phases)
    return {m[1]: int(m[2]) for m in found if m}


def cascade_part(args) -> None:
    loras = {stage: getattr(args, f"{stage}_lora") for stage in STAGES}
    # absolute: sample.py runs in a temporary folder
    loras = {stage: lora and str(Path(lora).resolve()) for stage, lora in loras.items()}
    # no LoRA given: the shipped few-step default, which needs no flag
    arms = {"teacher": ["--teachers"], "few-step": student_flags(loras, args.student_steps)}
    results = {}
    for arm, flags in arms.items():
        with tempfile.TemporaryDirectory() as tmp:
            cache, out = Path(tmp, "xla"), Path(tmp)
            runs = [run_once(cache, out, flags) for _ in range(1 + args.warm_runs)]
        results[arm] = runs
        print(f"  {arm}: " + " ".join(f"{wall:.1f} s" for wall, _ in runs), file=sys.stderr)
    print(f"\nFlags of the few-step arm: `{' '.join(arms['few-step']) or '(none: the default)'}`\n")
    rows = []
    calls = {arm: unet_calls(runs[0][1]) for arm, runs in results.items()}
    for stage in STAGES:
        rows.append([f"UNet calls, {stage}", *(calls[arm].get(stage, 0) for arm in arms), ""])
    totals = [sum(calls[arm].values()) for arm in arms]
    rows.append(["UNet calls per video", *totals, f"{totals[0] / max(totals[1], 1):.1f}×"])
    labels = ["cold", *[f"warm {i + 1}" for i in range(args.warm_runs)]]
    for i, label in enumerate(labels):
        walls = [results[arm][i][0] for arm in arms]
        rows.append([f"seconds per video, {label}", *(f"{w:.1f}" for w in walls),
                     f"{walls[0] / walls[1]:.2f}×"])  # fmt: skip
    for name in dict.fromkeys(n for runs in results.values() for n, _ in shortened(runs[-1][1])):
        seconds = [dict(shortened(results[arm][-1][1])).get(name, 0.0) for arm in arms]
        rows.append([f"{name} (last warm run)", *(f"{s:.1f}" for s in seconds), ""])
    print(table(["", "teachers (`--teachers`)", "few-step", "teachers / few-step"], rows))


def steps_worker(variant: str, plain: bool, steps: int, workdir: str, data: str) -> None:
    """One training run in this process on the images or clips in `data`; its median seconds
    per step is printed as JSON."""
    from configs import lcd
    from mv2_jax.training.trainer import train

    config = lcd.get_config(variant)
    if plain:  # the same stage, LoRA, batch and data; its ordinary loss
        del config.lcd
    form = "image_dir" if config.stage == "t2i" else "video_dir"
    config.data.update({"precomputed_dir": "", form: data})
    config.total_steps, config.log_every, config.checkpoint_every = steps, 5, 10**9
    train(config, workdir)
    rows = [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]
    seconds = [row["seconds_per_step"] for row in rows[1:] if "seconds_per_step" in row]
    print(json.dumps({"seconds_per_step": statistics.median(seconds), "windows": len(seconds)}))


def steps_part(args) -> None:
    rows = []
    for variant in args.variants:
        measured = {}
        for kind in ("plain", "lcd"):
            with tempfile.TemporaryDirectory() as tmp:
                data = args.images if variant.endswith("t2i") else args.clips
                cmd = [sys.executable, __file__, "--worker", variant, kind, str(args.steps), tmp]
                cmd.append(data)
                done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
            if done.returncode != 0:
                sys.exit(f"{variant} {kind}: the training run failed ({done.returncode})")
            measured[kind] = json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"]
            print(f"  {variant} {kind}: {measured[kind]:.2f} s/step", file=sys.stderr)
        plain, distil = measured["plain"], measured["lcd"]
        rows.append([variant, f"{plain:.2f}", f"{distil:.2f}", f"{distil / plain:.2f}×"])
    print(table(["configs/lcd.py", "plain step (s)", "distillation step (s)", "ratio"], rows))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        variant, kind, steps, workdir, data = sys.argv[2:7]
        return steps_worker(variant, kind == "plain", int(steps), workdir, data)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=("cascade", "steps", "both"), default="both")
    for stage in STAGES:
        parser.add_argument(
            f"--{stage}-lora",
            help=f"a {stage.upper()} student's LoRA (default: the shipped few-step sampling)",
        )
    parser.add_argument("--student-steps", type=int, default=4,
                        help="each given student's LCM steps")  # fmt: skip
    parser.add_argument("--warm-runs", type=int, default=2, help="warm runs after the cold one")
    parser.add_argument("--variants", nargs="+", default=["shapes_t2i", "shapes_i2v"],
                        help="configs/lcd.py variants of part `steps`")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--images", default=DATA["t2i"], help="part `steps`: T2I data")
    parser.add_argument("--clips", default=DATA["i2v"], help="part `steps`: I2V / V2V data")
    args = parser.parse_args()
    print(machine())
    if args.part in ("cascade", "both"):
        cascade_part(args)
    if args.part in ("steps", "both"):
        steps_part(args)


if __name__ == "__main__":
    main()
