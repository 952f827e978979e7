"""Two `evaluate.py` runs on the same prompts and seeds, compared sample by sample: for each
metric, both means and their paired difference (B − A) with a 95 % bootstrap interval over the
samples both runs have (resampled with replacement, `rounds` times, from a fixed seed).

    python -m mv2_jax.evaluation.compare runs/eval/base runs/eval/lora \
        [--metric travel_fraction --metric motion] [--group heldout]

Paired, because both runs sample each (prompt, seed) from the same noise: the difference of
a pair is what the change did to that sample, and its spread is far smaller than the spread
of either run's values.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mv2_jax.evaluation.shapes import METRICS

GROUPS = {"all": None, "heldout": True, "train": False}


def read_samples(folder: str | Path) -> dict[str, dict]:
    """`{sample key: record}` of an evaluation folder's results.jsonl."""
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results; run evaluate.py --out {folder} first")
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["key"]: r for r in records if r.get("kind") == "sample"}


def paired_difference(
    a: Sequence[float], b: Sequence[float], rounds: int = 10_000, seed: int = 0
) -> dict:
    """Means of `a` and `b` (paired samples) and of `b − a`, with the 2.5 / 97.5 percentiles of
    the bootstrap distribution of the mean difference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = b - a
    picks = np.random.default_rng(seed).integers(len(diff), size=(rounds, len(diff)))
    means = diff[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": len(diff), "a": a.mean(), "b": b.mean(), "diff": diff.mean(),
            "low": float(low), "high": float(high)}  # fmt: skip


def compare(
    a: Mapping[str, dict], b: Mapping[str, dict], metrics: Sequence[str], group: str = "all"
) -> dict[str, dict]:
    """`{metric: paired_difference}` over the samples both runs scored (in `group`)."""
    wanted = GROUPS[group]
    keys = [k for k in a if k in b and (wanted is None or a[k]["heldout"] == wanted)]
    if not keys:
        raise ValueError("the two runs share no sample: evaluate both with the same prompts")
    out = {}
    for metric in metrics:
        pairs = [(a[k].get(metric), b[k].get(metric)) for k in keys]
        pairs = [(float(x), float(y)) for x, y in pairs if x is not None and y is not None]
        if pairs:
            out[metric] = paired_difference(*zip(*pairs, strict=True))
    return out


def main(argv: list[str] | None = None) -> int:
    names = [name for name, _, _ in METRICS]
    parser = argparse.ArgumentParser(
        prog="python -m mv2_jax.evaluation.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("a", help="the first evaluate.py --out folder (the baseline)")
    parser.add_argument("b", help="the second (the change)")
    parser.add_argument("--metric", action="append", choices=names, help="(default: every one)")
    parser.add_argument("--group", choices=tuple(GROUPS), default="all")
    args = parser.parse_args(argv)
    try:
        rows = compare(read_samples(args.a), read_samples(args.b), args.metric or names, args.group)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"| metric ({args.group}) | n | A | B | B − A | 95 % interval |")
    print("|---|---|---|---|---|---|")
    for metric, r in rows.items():
        print(f"| {metric} | {r['n']} | {r['a']:.4g} | {r['b']:.4g} | {r['diff']:+.4g} | "
              f"[{r['low']:+.4g}, {r['high']:+.4g}] |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
