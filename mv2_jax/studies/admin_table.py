"""The admin page's live table: raw G/S/B counts per pair of arms and criterion, straight from
the export rows, with (G+S)/(B+S) and the win rate G/(G+B) from `stats`. No exclusions and no
intervals (those are the report's, `studies report`); gold (attention-check) votes are left out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from mv2_jax.studies import stats
from mv2_jax.studies.criteria import CRITERIA

OUTCOME = {stats.X_BETTER: "G", stats.SAME: "S", stats.Y_BETTER: "B"}


def live_table(
    rows: Iterable[dict[str, Any]], arms: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Export rows → one dict per (arm_a, arm_b, criterion) that has votes:
    `{"arm_a", "arm_b", "criterion", "G", "S", "B", "votes", "gs_over_bs", "win_rate"}`.
    arm_a is the one listed first in `arms` (the study's order, as in the report), and G counts
    votes for its side. A ratio that is undefined or infinite is None (JSON has no infinity)."""
    real = [row for row in rows if row.get("gold") is None]
    names = list(dict.fromkeys([*(arms or []), *sorted({r["arm_left"] for r in real}),
                                *sorted({r["arm_right"] for r in real})]))  # fmt: skip
    rank = {name: index for index, name in enumerate(names)}
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for row in real:
        x, y = sorted((row["arm_left"], row["arm_right"]), key=rank.__getitem__)
        code = stats.code_vote(row["vote"], row["arm_left"], row["arm_right"], x, y)
        counts[(x, y, row["criterion"], OUTCOME[code])] += 1
    criterion_rank = {name: index for index, name in enumerate(CRITERIA)}
    keys = sorted(
        {key[:3] for key in counts},
        key=lambda k: (rank[k[0]], rank[k[1]], criterion_rank.get(k[2], len(CRITERIA)), k[2]),
    )
    table = []
    for arm_a, arm_b, criterion in keys:
        good, same, bad = (counts[(arm_a, arm_b, criterion, outcome)] for outcome in "GSB")
        ratio = stats.gsb_ratio(good, same, bad)
        table.append(
            {
                "arm_a": arm_a,
                "arm_b": arm_b,
                "criterion": criterion,
                "G": good,
                "S": same,
                "B": bad,
                "votes": good + same + bad,
                "gs_over_bs": ratio if ratio is not None and math.isfinite(ratio) else None,
                "win_rate": stats.win_rate(good, bad),
            }
        )
    return table
