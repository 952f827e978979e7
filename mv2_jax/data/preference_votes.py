"""A side-by-side study's votes (`python -m mv2_jax.studies export`, one JSON row per vote) →
preference pairs `{prompt, chosen, rejected, weight, criterion, origin}` for
`mv2_jax.data.preferences`.

What is kept, in order:
1. rows of the raters on the allow-list (`raters`; None: every rater);
2. raters whose gold-check accuracy is at least `min_gold_accuracy` — accuracy over the gold
   rows that test the criterion voted on (`gold` is "left" / "same" / "right"; "any" marks a
   check that does not test that criterion and does not count); raters without such a row are
   kept, as `studies report` keeps them;
3. the non-gold rows of the asked `criteria` (a gold row never becomes a pair).

Left and right are randomised per rater, so each vote is first turned into a vote on the two
*videos*. The votes on one (pair_id, criterion) then become pairs by `aggregate`:
- "majority" (default): one pair whose winner is the outcome (video A, same, video B) that
  most raters chose; no strict plurality (e.g. one vote each way) is a tie. Weight 1.
- "each": one pair per vote, weighted 1/n for the n votes of that (pair_id, criterion), so a
  pair weighs as much in total however many raters saw it (a dissenting vote stays as a
  pair the other way round: the data carries the raters' disagreement).
A tie is dropped (`ties="drop"`, default, as Diffusion-DPO drops Pick-a-Pic's ties) or kept as
two pairs, each way round, with half the weight (`ties="keep"`): a tie's label is ½ for each
side, as in Bradley–Terry with ties counted half a win each (VideoAlign's tie handling).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from mv2_jax.data.manifest import ManifestError, jsonl_objects
from mv2_jax.data.preferences import resolve_media
from mv2_jax.studies.criteria import VOTES  # no study dependencies: names only

TIES = ("drop", "keep")
AGGREGATES = ("majority", "each")
REQUIRED = ("pair_id", "prompt", "video_left", "video_right", "rater", "criterion", "vote")


def read_vote_rows(path: Path) -> list[dict]:
    """The export's rows, each with its line number under `"_line"`; a row that is not a JSON
    object, lacks a field or has an unknown vote is an error naming its line."""
    if not path.is_file():
        raise ManifestError(
            f"{path}: no such votes file (write one with `python -m "
            "mv2_jax.studies export --out votes.jsonl`)"
        )
    rows = []
    for number, row in jsonl_objects(path):
        missing = [name for name in REQUIRED if name not in row]
        if missing:
            raise ManifestError(
                f"{path}:{number}: lacks {', '.join(missing)}; votes rows are the rows of "
                "`python -m mv2_jax.studies export`"
            )
        if row["vote"] not in VOTES or row.get("gold") not in (*VOTES, "any", None):
            raise ManifestError(
                f"{path}:{number}: vote {row['vote']!r} / gold {row.get('gold')!r}; a vote "
                f"is one of {', '.join(VOTES)} (gold also 'any' or null)"
            )
        rows.append({**row, "_line": number})
    return rows


def gold_accuracy(rows: Iterable[dict]) -> dict[str, float]:
    """Per rater: the fraction of gold rows (gold "left" / "same" / "right") voted as expected.
    Rows with gold "any" or null do not count; a rater with no gold row is absent."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for row in rows:
        if row.get("gold") in VOTES:
            total[row["rater"]] += 1
            right[row["rater"]] += row["vote"] == row["gold"]
    return {rater: right[rater] / total[rater] for rater in sorted(total)}


def _video_vote(row: dict) -> tuple[tuple[str, str], int]:
    """A vote on left/right → ((video A, video B) in sorted order, +1 A better / 0 / -1)."""
    left, right = str(row["video_left"]), str(row["video_right"])
    sign = {"left": 1, "same": 0, "right": -1}[row["vote"]]
    return ((left, right), sign) if left <= right else ((right, left), -sign)


def _majority(signs: Sequence[int]) -> int:
    """The outcome (+1, 0, -1) with strictly the most votes; 0 (a tie) when none has."""
    counts = Counter(signs).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return 0
    return counts[0][0]


def study_pairs(
    path: str | os.PathLike,
    *,
    criteria: Sequence[str] = ("overall",),
    ties: str = "drop",
    min_gold_accuracy: float = 0.8,
    raters: Sequence[str] | None = None,
    aggregate: str = "majority",
    media_dir: str | os.PathLike | None = None,
    counts: Counter | None = None,
) -> list[dict]:
    """Pairs `{prompt, chosen, rejected (Paths), weight, criterion, origin ("FILE:LINE")}` of
    the export at `path` (see the module docstring for the rules). Relative video paths are
    resolved against `media_dir` (default: the export's folder). `counts` (if given) gets
    `votes`, `gold_rows`, `other_criteria`, `rater_not_listed`, `rater_below_gold`,
    `ties_dropped`, `ties_kept` and `pairs`."""
    if ties not in TIES or aggregate not in AGGREGATES:
        raise ValueError(f"ties={ties!r}, aggregate={aggregate!r}: choose {TIES} and {AGGREGATES}")
    if not 0.0 <= min_gold_accuracy <= 1.0:
        raise ValueError(f"min_gold_accuracy={min_gold_accuracy} must lie in [0, 1]")
    path = Path(path)
    media_dir = path.parent if media_dir is None else Path(media_dir)
    counts = Counter() if counts is None else counts
    rows = read_vote_rows(path)
    counts["votes"] += len(rows)
    if raters is not None:
        present = {row["rater"] for row in rows}
        unknown = [r for r in raters if r not in present]
        if unknown:
            raise ValueError(
                f"--raters lists {unknown}, who cast no vote in {path}; its raters "
                f"are {sorted(present)}"
            )
        counts["rater_not_listed"] += sum(row["rater"] not in raters for row in rows)
        rows = [row for row in rows if row["rater"] in raters]
    accuracy = gold_accuracy(rows)
    below = {rater for rater, value in accuracy.items() if value < min_gold_accuracy}
    counts["rater_below_gold"] += sum(row["rater"] in below for row in rows)
    rows = [row for row in rows if row["rater"] not in below]
    counts["gold_rows"] += sum(row.get("gold") is not None for row in rows)
    rows = [row for row in rows if row.get("gold") is None]
    voted = {row["criterion"] for row in rows}
    missing = [c for c in criteria if c not in voted]
    if missing:
        raise ValueError(
            f"{path}: no kept vote on criterion {missing}; the kept votes are on "
            f"{sorted(voted)} (--criterion)"
        )
    counts["other_criteria"] += sum(row["criterion"] not in criteria for row in rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["criterion"] in criteria:
            groups.setdefault((row["pair_id"], row["criterion"]), []).append(row)

    pairs = []
    for (_, criterion), group in groups.items():
        votes = [_video_vote(row) for row in group]
        if aggregate == "majority":
            outcomes = [(votes[0][0], _majority([sign for _, sign in votes]), 1.0, group[0])]
        else:
            outcomes = [
                (videos, sign, 1.0 / len(group), row) for (videos, sign), row in zip(votes, group)
            ]
        for (a, b), sign, weight, row in outcomes:
            a, b = resolve_media(a, media_dir), resolve_media(b, media_dir)
            base = {
                "prompt": str(row["prompt"]),
                "criterion": criterion,
                "origin": f"{path.name}:{row['_line']}",
            }
            if sign != 0:
                chosen, rejected = (a, b) if sign > 0 else (b, a)
                pairs.append({**base, "chosen": chosen, "rejected": rejected, "weight": weight})
            elif ties == "keep":
                counts["ties_kept"] += 1
                pairs.append({**base, "chosen": a, "rejected": b, "weight": weight / 2})
                pairs.append({**base, "chosen": b, "rejected": a, "weight": weight / 2})
            else:
                counts["ties_dropped"] += 1
    counts["pairs"] += len(pairs)
    if not pairs:
        raise ValueError(
            f"{path}: no preference pair is left ({dict(counts)}); keep ties "
            "(--ties keep) or lower --min-gold-accuracy"
        )
    return pairs
