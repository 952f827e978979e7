"""`python -m mv2_jax.studies label`: preference pairs from an automated judge, without a study.

Several samples of each prompt (different seeds, from one or more arms of `sample.py batch`)
are paired — every two samples of a prompt — and judged on one criterion; each decisive vote
becomes a JSONL line `{"prompt", "chosen", "rejected", "criterion", "scores"}` that
`python -m mv2_jax.data.build preferences --pairs FILE` reads. Ties ("same") are counted and
left out. This is how issue 21 labels the base model's own samples for preference tuning; a
study (`create` / `auto-rate` / `export`) gives the same labels through the HTTP API.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mv2_jax.studies.criteria import CRITERIA


def add_parser(subparsers) -> argparse.ArgumentParser:
    from mv2_jax.studies.judges import JUDGES

    parser = subparsers.add_parser(
        "label",
        help="judge every two samples of each prompt; decisive votes → pairs JSONL",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument(
        "--arm",
        action="append",
        type=Path,
        required=True,
        metavar="DIR",
        help="a folder of videos with sidecars (sample.py batch); repeatable",
    )
    parser.add_argument("--judge", default="shapes", choices=sorted(JUDGES))
    parser.add_argument("--criterion", default="overall", choices=sorted(CRITERIA))
    parser.add_argument("--out", type=Path, required=True, help="pairs.jsonl")
    return parser


def samples_by_prompt(arms: list[Path]) -> dict[str, list[Path]]:
    """Every video of the arms, grouped by prompt (sorted by arm and seed)."""
    from mv2_jax.studies.sidecar import read_arm

    grouped: dict[str, list[Path]] = defaultdict(list)
    for arm in arms:
        for (prompt, _), item in sorted(read_arm(arm).items()):
            grouped[prompt].append(item.video)
    return dict(grouped)


def label_pairs(grouped: dict[str, list[Path]], judge, criterion: str, progress=None):
    """Yield (row, vote) for every two samples of each prompt; row None for a tie."""
    from mv2_jax.media import read_video

    for prompt, videos in grouped.items():
        for a, b in itertools.combinations(videos, 2):
            judgement = judge.judge(read_video(a)[0], read_video(b)[0], prompt, [criterion])
            vote = judgement.votes[criterion]
            if progress is not None:
                progress.update(1)
            if vote == "same":
                yield None, vote
                continue
            chosen, rejected = (a, b) if vote == "left" else (b, a)
            scores = {"left": judgement.left.as_dict(), "right": judgement.right.as_dict()}
            yield {"prompt": prompt, "chosen": str(chosen), "rejected": str(rejected),
                   "criterion": criterion, "scores": scores}, vote  # fmt: skip


def run(args) -> int:
    from tqdm import tqdm

    from mv2_jax.studies.judges import make_judge

    try:
        grouped = samples_by_prompt(args.arm)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(len(v) * (len(v) - 1) // 2 for v in grouped.values())
    if total == 0:
        print("error: no prompt has two samples; make several seeds (--seeds 2)", file=sys.stderr)
        return 2
    counts: Counter = Counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    with open(partial, "w") as f, tqdm(total=total, unit="pair", desc="label") as bar:
        for row, vote in label_pairs(grouped, make_judge(args.judge), args.criterion, bar):
            counts[vote] += 1
            if row is not None:
                f.write(json.dumps(row, default=float) + "\n")  # numpy scalars too
    os.replace(partial, args.out)
    decisive = counts["left"] + counts["right"]
    print(f"{args.out}: {decisive} pairs ({counts['same']} ties left out) from {total} judged")
    return 0
