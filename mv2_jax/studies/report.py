"""The report of a side-by-side study, from its export rows (`studies export`, one per vote).

For every pair of arms X vs Y and every criterion: G, S, B from X's point of view, MagicVideo-V2's
(G+S)/(B+S) (arXiv:2401.04468, Table 1), the win rate G/(G+B), and 95 % bootstrap intervals that
resample whole prompts; Krippendorff's α; gold-check accuracy per rater, with the raters below
the threshold excluded (both sets of numbers kept); Bradley–Terry strengths with more than two
arms. `report` returns all numbers as a dict; `write_report` also writes report.md, report.json
and report.png (see `report_render`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mv2_jax.studies import stats
from mv2_jax.studies.criteria import CRITERIA, VOTES

REQUIRED_FIELDS = ("pair_id", "prompt", "arm_left", "arm_right", "rater", "criterion", "vote")
SECTIONS = ("all_raters", "gold_passed")  # every rater; raters at or above the gold threshold
COUNT_COLUMN = {stats.X_BETTER: 0, stats.SAME: 1, stats.Y_BETTER: 2}  # code → G, S, B


def check_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows as dicts, each with every field the report reads and a known vote."""
    checked = []
    for number, row in enumerate(rows, start=1):
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise ValueError(
                f"export row {number} lacks {', '.join(missing)}; report rows are the rows of "
                "`python -m mv2_jax.studies export` (one JSON object per vote)"
            )
        if row["vote"] not in VOTES:
            raise ValueError(
                f"export row {number} has vote {row['vote']!r}; a vote is one of {', '.join(VOTES)}"
            )
        checked.append({**row, "gold": row.get("gold")})
    studies = sorted({str(row.get("study")) for row in checked if row.get("study") is not None})
    if len(studies) > 1:
        raise ValueError(
            f"the rows mix studies {', '.join(studies)}; report one study at a time "
            "(export it with --name)"
        )
    return checked


def order_arms(
    real_rows: Sequence[Mapping[str, Any]],
    reference: str | None,
    listed: Sequence[str] | None,
) -> list[str]:
    """The arms, "ours" first: `reference`, else the study's first listed arm, else the first
    alphabetically; the others in the study's order (`listed`), else alphabetically."""
    voted = sorted({row[side] for row in real_rows for side in ("arm_left", "arm_right")})
    if listed is not None:
        unknown = [arm for arm in voted if arm not in listed]
        if unknown:
            raise ValueError(
                f"the rows have votes on arms {', '.join(unknown)} that the study's arms "
                f"({', '.join(listed)}) leave out; pass arms=None or the study's own list"
            )
    arms = list(dict.fromkeys(listed)) if listed is not None else voted
    if reference is None or not arms:  # no votes yet: an empty report, not an error
        return arms
    if reference not in arms:
        raise ValueError(
            f"reference arm {reference!r} is not an arm of the study; its arms are "
            f"{', '.join(arms)}"
        )
    return [reference] + [arm for arm in arms if arm != reference]


def order_criteria(rows: Sequence[Mapping[str, Any]], criteria: Sequence[str] | None) -> list[str]:
    """`criteria` as given (rows on any other criterion are refused), else those in the rows,
    the known ones in `CRITERIA` order (overall, visual, consistency, structure) first."""
    seen = list(dict.fromkeys(row["criterion"] for row in rows))
    if criteria is None:
        return [name for name in CRITERIA if name in seen] + [
            name for name in seen if name not in CRITERIA
        ]
    unknown = [name for name in seen if name not in criteria]
    if unknown:
        raise ValueError(
            f"the rows have criteria {', '.join(unknown)} that criteria={list(criteria)} leaves "
            "out; pass the study's full list of criteria (or None to take them from the rows)"
        )
    return list(criteria)


def tally(
    rows: Sequence[Mapping[str, Any]], x: str, y: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """G, S, B of X vs Y over `rows` (all on pairs of x and y), the two ratios and their
    bootstrap intervals (clusters: prompts, in sorted order so that row order cannot matter)."""
    per_prompt: dict[str, np.ndarray] = {}
    for row in rows:
        code = stats.code_vote(row["vote"], row["arm_left"], row["arm_right"], x, y)
        per_prompt.setdefault(row["prompt"], np.zeros(3))[COUNT_COLUMN[code]] += 1
    counts = np.array([per_prompt[prompt] for prompt in sorted(per_prompt)]).reshape(-1, 3)
    good, same, bad = (int(total) for total in counts.sum(axis=0))
    intervals = stats.gsb_intervals(
        counts, options["n_bootstrap"], options["confidence"], options["seed"]
    )
    if good + same + bad == 0:
        note = "no votes"
    elif good + bad == 0:
        note = "only ties: the win rate G/(G+B) is undefined"
    elif bad + same == 0:
        note = f"{x} won every vote: (G+S)/(B+S) is infinite"
    else:
        note = None
    return {
        "G": good,
        "S": same,
        "B": bad,
        "votes": good + same + bad,
        "prompts": len(per_prompt),
        "gsb_ratio": stats.gsb_ratio(good, same, bad),
        "gsb_ratio_ci": intervals["gsb_ratio"],
        "win_rate": stats.win_rate(good, bad),
        "win_rate_ci": intervals["win_rate"],
        "note": note,
    }


def compare(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    criteria: Sequence[str],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """One comparison X vs Y: a tally per criterion, and one pooled over all criteria."""
    between = [row for row in rows if {row["arm_left"], row["arm_right"]} == {x, y}]
    return {
        "arm": x,
        "versus": y,
        "criteria": {
            name: tally([row for row in between if row["criterion"] == name], x, y, options)
            for name in criteria
        },
        "pooled": tally(between, x, y, options),
    }


def agreement(
    rows: Sequence[Mapping[str, Any]], arms: Sequence[str], criteria: Sequence[str]
) -> dict[str, Any]:
    """Krippendorff's α (ordinal), units = (pair, criterion), votes coded from the point of view
    of the pair's first arm in `arms`, so that mirrored left/right placements agree."""
    rank = {arm: index for index, arm in enumerate(arms)}
    units: dict[tuple[Any, str], dict[str, int]] = {}
    for row in rows:
        x, y = sorted((row["arm_left"], row["arm_right"]), key=rank.__getitem__)
        code = stats.code_vote(row["vote"], row["arm_left"], row["arm_right"], x, y)
        units.setdefault((row["pair_id"], row["criterion"]), {})[row["rater"]] = code

    def summary(selected: dict[tuple[Any, str], dict[str, int]]) -> dict[str, Any]:
        alpha, note = stats.ordinal_alpha(selected)
        doubly_rated = sum(len(votes) >= 2 for votes in selected.values())
        return {
            "alpha": alpha,
            "units": len(selected),
            "units_rated_twice": doubly_rated,
            "note": note,
        }

    result = summary(units)
    result["per_criterion"] = {
        name: summary({unit: votes for unit, votes in units.items() if unit[1] == name})
        for name in criteria
    }
    return result


def strengths(
    rows: Sequence[Mapping[str, Any]],
    arms: Sequence[str],
    criterion: str,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Bradley–Terry log-strengths of every arm on one criterion, ties as half a win each,
    with bootstrap intervals by prompt."""
    index = {arm: position for position, arm in enumerate(arms)}
    per_prompt: dict[str, np.ndarray] = {}
    for row in rows:
        if row["criterion"] != criterion:
            continue
        left, right = index[row["arm_left"]], index[row["arm_right"]]
        wins = per_prompt.setdefault(row["prompt"], np.zeros((len(arms), len(arms))))
        if row["vote"] == "left":
            wins[left, right] += 1
        elif row["vote"] == "right":
            wins[right, left] += 1
        else:
            wins[left, right] += 0.5
            wins[right, left] += 0.5
    if not per_prompt:
        return {"arms": [], "note": "no votes"}
    stacked = np.stack([per_prompt[prompt] for prompt in sorted(per_prompt)])
    groups = stats.linked_groups(stacked.sum(axis=0) + stacked.sum(axis=0).T)
    if len(groups) > 1:
        names = " | ".join(", ".join(arms[arm] for arm in group) for group in groups)
        return {"arms": [], "note": f"arms never compared across these groups: {names}"}
    point, intervals = stats.bradley_terry_intervals(
        stacked,
        options["n_bootstrap"],
        options["confidence"],
        options["seed"],
        options["virtual_ties"],
    )
    return {
        "arms": [
            {
                "arm": arm,
                "log_strength": float(point[position]),
                "log_strength_ci": intervals[position],
                "strength": math.exp(point[position]),
            }
            for position, arm in enumerate(arms)
        ],
        "note": None,
    }


def summarise(
    rows: Sequence[Mapping[str, Any]],
    arms: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    criteria: Sequence[str],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Every number of one set of raters' real (non-gold) votes."""
    bradley_terry = None
    if len(arms) > 2:
        bradley_terry = {name: strengths(rows, arms, name, options) for name in criteria}
    return {
        "raters": sorted({row["rater"] for row in rows}),
        "votes": len(rows),
        "prompts": len({row["prompt"] for row in rows}),
        "comparisons": [compare(rows, x, y, criteria, options) for x, y in pairs],
        "agreement": agreement(rows, arms, criteria),
        "bradley_terry": bradley_terry,
    }


def report(
    rows: Iterable[Mapping[str, Any]],
    reference: str | None = None,
    *,
    arms: Sequence[str] | None = None,
    criteria: Sequence[str] | None = None,
    gold_threshold: float = 0.8,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    virtual_ties: float = 1.0,
) -> dict[str, Any]:
    """All the numbers of one study's export rows, as a JSON-ready dict (floats may be inf).

    reference: the arm called "ours": it is X in every comparison it takes part in (default:
      the first of `arms`, else the first alphabetically).
    arms: the study's arms in its order; other pairs take the earlier arm in it as X
      (default: the arms in the rows, alphabetically).
    criteria: the study's criteria, in table order (default: as they first appear in the rows).
    gold_threshold: raters whose gold-check accuracy is below it are excluded from "gold_passed"
      (raters without gold checks are kept). Gold rows never enter the G/S/B tallies.
    n_bootstrap, confidence, seed: the cluster bootstrap (prompts resampled with replacement).
    virtual_ties: ties added to every compared pair in the Bradley–Terry fit (see `stats`).
    """
    if not 0 < confidence < 1 or n_bootstrap < 1:
        raise ValueError("confidence must lie in (0, 1) and n_bootstrap be at least 1")
    rows = check_rows(rows)
    real = [row for row in rows if row["gold"] is None]
    gold = [row for row in rows if row["gold"] in VOTES]  # "any": a check this criterion skips
    arms = order_arms(real, reference, arms)
    rank = {arm: position for position, arm in enumerate(arms)}
    pairs = sorted(
        {tuple(sorted((row["arm_left"], row["arm_right"]), key=rank.__getitem__)) for row in real},
        key=lambda pair: (rank[pair[0]], rank[pair[1]]),
    )
    criteria = order_criteria(rows, criteria)
    accuracy = stats.gold_accuracy([(row["rater"], row["vote"] == row["gold"]) for row in gold])
    excluded = [rater for rater, check in accuracy.items() if check["accuracy"] < gold_threshold]
    options = {
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
        "virtual_ties": virtual_ties,
    }
    kept = [row for row in real if row["rater"] not in excluded]
    return {
        "study": next((row["study"] for row in rows if row.get("study") is not None), None),
        "reference": arms[0] if arms else reference,
        "arms": arms,
        "criteria": criteria,
        "settings": {"gold_threshold": gold_threshold, **options},
        "gold": {
            "threshold": gold_threshold,
            "raters": [{"rater": rater, **check} for rater, check in accuracy.items()],
            "excluded": excluded,
        },
        "results": {
            "all_raters": summarise(real, arms, pairs, criteria, options),
            "gold_passed": summarise(kept, arms, pairs, criteria, options),
        },
    }


def to_json(value: Any) -> Any:
    """`value` with ±inf written as "inf"/"-inf" and NaN as null: strict JSON, no Infinity."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def write_report(
    rows: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    reference: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write report.md, report.json and report.png into `out_dir` (created if missing) and
    return the dict of `report(rows, reference, **options)`."""
    from mv2_jax.studies.report_render import draw_chart, render_markdown

    result = report(rows, reference, **options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_json(result), indent=2, allow_nan=False)
    (out_dir / "report.json").write_text(text + "\n", encoding="utf-8")
    draw_chart(result, out_dir / "report.png")
    (out_dir / "report.md").write_text(render_markdown(result, "report.png"), encoding="utf-8")
    return result
