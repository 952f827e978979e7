"""The shapes-world quality evaluation: `python evaluate.py --out DIR` (`--help` for every
flag). The program lives in mv2_jax/cli/evaluate.py (installed as `mv2-evaluate`); this file
runs it from a checkout.
"""

import sys
from pathlib import Path

# Run as a script from a checkout: make the package next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mv2_jax.cli.evaluate import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
