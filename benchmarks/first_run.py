"""Where the time of the README's first command goes (issue 18): `python sample.py "a red
circle moving right" --out video.mp4`, run cold (an empty compilation cache) and then warm (the
same cache), each in a fresh process, with `--timings`; prints one table of seconds per phase
(imports, loading each model, compiling or restoring compiled programs, each stage, writing the
video) from the progress lines the command prints, and the wall time seen from outside.

    python benchmarks/first_run.py [--runs 2] [--keep-cache DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right"
TIMING = "timing:"  # mv2_jax.commands.progress.TIMING_PREFIX (not imported: no jax here)


def run_once(
    cache: Path, out_dir: Path, flags: Sequence[str] = ()
) -> tuple[float, list[tuple[str, float]]]:
    """One fresh process of the README's command with `flags` added: (wall seconds,
    [(phase's progress line, seconds), …]) from its `--timings` lines, in the order they came."""
    argv = [sys.executable, str(ROOT / "sample.py"), PROMPT, "--out", str(out_dir / "video.mp4")]
    argv += ["--compilation-cache", str(cache), "--timings", *flags]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=out_dir)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sample.py failed ({done.returncode}):\n{done.stderr}")
    phases = []
    for line in done.stderr.splitlines():
        if line.startswith(TIMING):
            seconds, name = line[len(TIMING) :].split(" s  ", 1)
            phases.append((name, float(seconds)))
    return wall, phases


def short_name(line: str) -> str:
    """A phase's progress line, shortened for the table."""
    if line.startswith("loading the LoRA "):  # "… the LoRA PATH (scale 1)" → "loading LoRA NAME"
        path = line[len("loading the LoRA ") :].rsplit(" (scale ", 1)[0]
        return "loading LoRA " + Path(path).name
    if line.startswith("loading the "):  # "loading the I2V model FOLDER" → "loading I2V model"
        return "loading " + line[len("loading the ") :].rsplit(" ", 1)[0]
    if line.startswith("["):  # "[1/4] t2i: text → key image, 64×64" → "stage t2i: …"
        return "stage " + line.split("] ", 1)[1].split(",")[0]
    for prefix, name in (
        ("compiling or restoring", "compiling / restoring compiled programs"),
        ("writing ", "writing the video (encoding)"),
    ):
        if line.startswith(prefix):
            return name
    return line


def shortened(phases: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(short_name(line), seconds) for line, seconds in phases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="warm runs after the cold one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp, "xla"), Path(tmp)
        results = [("cold", *run_once(cache, out))]
        results += [(f"warm {i + 1}", *run_once(cache, out)) for i in range(args.runs)]
    results = [(label, wall, shortened(phases)) for label, wall, phases in results]
    names = list(dict.fromkeys(name for _, _, phases in results for name, _ in phases))
    header = ["phase", *[label for label, _, _ in results]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        cells = [f"{dict(phases).get(name, 0.0):.1f}" for _, _, phases in results]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| wall time, from outside | " + " | ".join(f"{w:.1f}" for _, w, _ in results) + " |")


if __name__ == "__main__":
    main()
