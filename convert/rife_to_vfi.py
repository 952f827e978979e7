"""RIFE v4.0–4.6 weights (`flownet.pkl`) → a FrameInterpolator folder for `sample.py vfi`.

    python convert/rife_to_vfi.py train_log/flownet.pkl --out models/rife46
    python sample.py vfi --input in.mp4 --factor 3 --model models/rife46 --out out.mp4

The mapping lives in `mv2_jax.weights.rife`; this file only reads the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from a checkout: make the package next to this folder importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mv2_jax.weights.rife import convert_rife


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rife_to_vfi.py",
        description=__doc__.split("\n")[0]
        + " Reads .pkl / .pth with torch.load(weights_only=True) (needs torch) or .safetensors; "
        "v4.7+ IFNets (with a feature encoder) are not supported.",
    )
    parser.add_argument("path", help="RIFE v4.0–4.6 flownet.pkl (an IFNet state dict)")
    parser.add_argument(
        "--out", required=True, help="new folder: config.json + diffusion_pytorch_model.safetensors"
    )
    args = parser.parse_args(argv)
    try:
        out = convert_rife(args.path, args.out)
    except (OSError, ValueError, NotImplementedError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}; use it with: python sample.py vfi --model {out} --input ... --out ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
