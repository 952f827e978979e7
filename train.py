"""Train a stage of the cascade: `python train.py --config configs/t2i.py:tiny --workdir DIR`
(`--help` for every flag). The program lives in mv2_jax/cli/train.py (installed as
`mv2-train`); this file runs it from a checkout.
"""

import sys
from pathlib import Path

# Run as a script from a checkout: make the package next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mv2_jax.cli.train import main

if __name__ == "__main__":
    main()
