"""What an install costs (issue 18): fresh venvs of this checkout's wheel with the dependency
list before issue 18 (training stack and transformers in the core) and after (the core alone;
core + the [train] extra for comparison). Per venv: packages (`pip list`, pip and setuptools
included), disk use (`du`: MB = 10⁶ bytes, MiB in brackets), `pip install` seconds from a warm
cache (the last of `--rounds` installs into a new venv; the first warms pip's cache), and the
seconds `import mv2_jax` and then `mv2_jax.load_pipeline` (the pipelines: jax, flax,
tokenizers) take in a fresh process from outside the checkout (median of 3).

    python benchmarks/install_size.py
    python benchmarks/install_size.py --variants core --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table

ROOT = Path(__file__).resolve().parents[1]
# The core dependencies as pyproject.toml listed them before issue 18 (commit 4d96eec).
BEFORE_ISSUE_18 = [
    "jax>=0.10.2", "flax>=0.12", "optax>=0.2.5", "orbax-checkpoint>=0.11", "numpy>=1.26",
    "ml_dtypes>=0.5", "safetensors>=0.4", "transformers>=4.40", "ml_collections>=1.0",
    "tqdm>=4.66", "pillow>=10", "av>=12", "grain>=0.2.18", "tensorflow-datasets>=4.9.10",
    "array_record>=0.8.6", "absl-py>=2", "tensorboardX>=2.6",
]  # fmt: skip
# Each variant: the `pip install` argument lists it takes, run one after the other.
VARIANTS = {
    "before (old core list)": lambda wheel: [["--no-deps", wheel], BEFORE_ISSUE_18],
    "core": lambda wheel: [[wheel]],
    "core + [train]": lambda wheel: [[f"mv2-jax[train] @ {Path(wheel).as_uri()}"]],
}
KEYS = {"before": "before (old core list)", "core": "core", "train": "core + [train]"}
IMPORT = """import time
start = time.perf_counter()
import mv2_jax
imported = time.perf_counter()
mv2_jax.load_pipeline
print(imported - start, time.perf_counter() - start)
"""


def build_wheel(out: Path) -> str:
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # stale staging would enter the wheel
    _pip(sys.executable, "wheel", "--no-deps", "-w", str(out), str(ROOT))
    return str(next(out.glob("mv2_jax-*.whl")))


def install(venv: Path, steps: list[list[str]]) -> float:
    """A new venv at `venv`; the seconds the `pip install` steps took in it."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    start = time.perf_counter()
    for requirements in steps:
        _pip(str(venv / "bin" / "python"), "install", *requirements)
    return time.perf_counter() - start


def package_count(venv: Path) -> int:
    listing = _pip(str(venv / "bin" / "python"), "list", "--format", "json")
    return len(json.loads(listing))


def disk_bytes(folder: Path) -> int:
    """Allocated bytes under `folder`, as `du` counts them (hard links once, links not
    followed)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            stat = os.lstat(os.path.join(dirpath, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total + os.lstat(folder).st_blocks * 512


def import_seconds(venv: Path, cwd: Path, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of `import mv2_jax`, and of that plus `mv2_jax.load_pipeline`."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", IMPORT], cwd=cwd, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"{venv.name}: import mv2_jax failed:\n{out.stderr[-3000:]}")
        runs.append([float(x) for x in out.stdout.split()])
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _pip(python: str, *args: str) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}
    proc = subprocess.run(
        [python, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"pip {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default="before,core,train",
        help="comma-separated: before, core, train (default all three)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="installs per variant (default 2)")
    args = parser.parse_args()
    names = [KEYS[v] for v in args.variants.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="install_size_") as tmp:
        tmp = Path(tmp)
        wheel = build_wheel(tmp / "dist")
        seconds = {name: 0.0 for name in names}
        for _ in range(args.rounds):  # round by round: the first warms pip's cache for all
            for name in names:
                seconds[name] = install(tmp / _slug(name), VARIANTS[name](wheel))
        for name in names:
            venv = tmp / _slug(name)
            size = disk_bytes(venv)
            imported, with_pipelines = import_seconds(venv, cwd=tmp)
            rows.append(
                [
                    name,
                    package_count(venv),
                    f"{size / 1e6:.0f} ({size / 2**20:.0f})",
                    f"{seconds[name]:.1f}",
                    f"{imported:.2f}",
                    f"{with_pipelines:.2f}",
                ]
            )
    headers = ["install", "packages", "disk, MB (MiB)", "pip install, s", "import mv2_jax, s"]
    print(f"{machine()}; Python {sys.version.split()[0]}; {date.today()}\n")
    print(table([*headers, "+ load_pipeline, s"], rows))


if __name__ == "__main__":
    main()
