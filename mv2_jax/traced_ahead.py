"""What a new user's first run would trace, traced ahead and shipped: the exported programs
(`pipelines/program_store.py`) and param shapes (`weights/shape_cache.py`) of the README's first
command (`sample.py "a red circle moving right"` on the shipped models), in
`mv2_jax/assets/traced/`. Both caches look there after their own folder, under the same digests
(the traced code's source, the model configurations, the jax / flax / mv2-jax versions and the
backend), so a first run on a matching install compiles without tracing anything, and any other
install, setting or change to the code traces as before: a stale entry is never read, only
useless.

    python -m mv2_jax.traced_ahead   # after a change to mv2_jax's models, diffusion, pipelines
                                     # or parallel code; CI's wheel job fails until then

It clears the folder, runs the README's command in this process with an empty cache, and keeps
what that run traced.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

TRACED = Path(__file__).resolve().parent / "assets" / "traced"
PROGRAMS = TRACED / "exported"  # <digest>.jaxexport, as in a ProgramStore's folder
SHAPES = TRACED / "param_shapes"  # <digest>.json, as in a shape cache's folder
README_PROMPT = "a red circle moving right"


def main() -> int:
    from mv2_jax.cli.sample import main as sample

    for folder in (PROGRAMS, SHAPES):
        shutil.rmtree(folder, ignore_errors=True)  # the run must trace everything afresh
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "xla")
        status = sample(
            [README_PROMPT, "--out", str(Path(tmp, "video.mp4")), "--compilation-cache", str(cache)]
        )
        if status != 0:
            return status
        for name, target in (("exported", PROGRAMS), ("param_shapes", SHAPES)):
            shutil.copytree(cache / name, target)
            print(f"{target}: {len(list(target.iterdir()))} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
