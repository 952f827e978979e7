"""PyTorch weights → mv2_jax's orbax form: `python convert/to_flax.py PATH --out DIR`
(`--help` for every flag). The program lives in mv2_jax/cli/convert.py (installed as
`mv2-convert`); this file runs it from a checkout.
"""

import sys
from pathlib import Path

# Run as a script from a checkout: make the package next to this folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mv2_jax.cli.convert import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
