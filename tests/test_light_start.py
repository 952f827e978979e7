"""The first second of a command: `import mv2_jax` and sample.py's flag parsing import no jax
or flax, so a flag error or `--help` answers at once; the jax-free copy of the scheduler names
is the registry's."""

import subprocess
import sys

from mv2_jax.diffusion.scheduler_names import SCHEDULER_NAMES
from mv2_jax.diffusion.schedulers import SCHEDULERS

PROGRAM = """
import sys
import mv2_jax
from mv2_jax.cli import sample
sample.build_parser().parse_args(["cascade", "a red circle", "--fps", "8"])
heavy = sorted(name for name in ("jax", "flax", "orbax", "transformers") if name in sys.modules)
print(",".join(heavy))
"""


def test_flag_parsing_imports_no_jax():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_scheduler_names_are_the_registry():
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
