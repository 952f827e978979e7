"""Sampling from the command line: `python sample.py "a prompt"` runs the whole cascade,
`python sample.py SUBCOMMAND ...` one stage (`--help` for every flag). The program lives in
mv2_jax/cli/sample.py (installed as `mv2-sample`); this file runs it from a checkout, and
before the slow imports makes Ctrl-C quiet and says what it is doing if they take a while.
"""

import os
import sys
import threading
import time
from pathlib import Path

STARTED = time.perf_counter()  # the imports below are the first phase of `--timings`


def _until_imported() -> threading.Timer | None:
    """As a script: Ctrl-C ends with one line and status 130, and a line says what runs if the
    imports (jax, flax: seconds on a busy machine) take over a second."""
    if __name__ != "__main__" or {"-h", "--help"} & set(sys.argv[1:]):
        return None
    import signal

    def interrupted(signum, frame):
        print("interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    line = "starting: importing jax and the pipelines"
    notice = threading.Timer(1.0, print, [line], {"file": sys.stderr, "flush": True})
    notice.daemon = True
    notice.start()
    return notice


_NOTICE = _until_imported()
# Run as a script from a checkout: make the package next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mv2_jax.cli.sample import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    if _NOTICE is not None:
        _NOTICE.cancel()  # imported: the run's own lines take over
    sys.exit(main(started=STARTED))
