"""The statistics of a side-by-side study: G/S/B ratios, cluster bootstrap, gold accuracy,
Krippendorff's α and Bradley–Terry strengths. Plain numpy/scipy, no study-store types: every
function takes counts or coded votes, so each can be checked against a hand-computed value.

Conventions. A vote is coded from the point of view of arm X of a comparison "X vs Y":
`X_BETTER` (2, a G for X), `SAME` (1, an S), `Y_BETTER` (0, a B). The code is ordinal and does
not depend on which side X was shown on, so raters who saw the pair mirrored still agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mv2_jax.studies.criteria import VOTES

X_BETTER, SAME, Y_BETTER = 2, 1, 0


def code_vote(vote: str, arm_left: str, arm_right: str, x: str, y: str) -> int:
    """The ordinal code of one vote on a pair showing `arm_left | arm_right`, seen from X."""
    if vote not in VOTES:
        raise ValueError(f"unknown vote {vote!r}; a vote is one of {', '.join(VOTES)}")
    if (arm_left, arm_right) == (x, y):
        return {"left": X_BETTER, "same": SAME, "right": Y_BETTER}[vote]
    if (arm_left, arm_right) == (y, x):
        return {"left": Y_BETTER, "same": SAME, "right": X_BETTER}[vote]
    raise ValueError(f"a pair of {arm_left!r} and {arm_right!r} is not a comparison of {x}/{y}")


def gsb_ratio(good: float, same: float, bad: float) -> float | None:
    """MagicVideo-V2's score (G+S)/(B+S) (arXiv:2401.04468, Table 1): > 1 means X is preferred.

    None when there are no votes; +inf when X won every vote (B+S = 0).
    """
    if good + same + bad == 0:
        return None
    if bad + same == 0:
        return math.inf
    return (good + same) / (bad + same)


def win_rate(good: float, bad: float) -> float | None:
    """G/(G+B), the share of decided votes that X won; None when every vote was a tie."""
    return None if good + bad == 0 else good / (good + bad)


def resample_weights(
    n_clusters: int, n_bootstrap: int, seed: int
) -> np.ndarray:  # [n_bootstrap, n_clusters]
    """How often each cluster (prompt) is drawn in each bootstrap resample (draws with
    replacement, n_clusters per resample). Seeded by `seed` alone, so an interval does not
    depend on which other intervals were computed before it."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_bootstrap)


def percentile_interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """The percentile interval of bootstrap `values`, NaNs (undefined resamples) dropped.

    Bounds are order statistics (numpy's "inverted_cdf"), never interpolations, so an infinite
    ratio in the tail gives an infinite bound instead of a NaN.
    """
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return [float(low), float(high)]


def gsb_intervals(
    counts_per_prompt: np.ndarray, n_bootstrap: int, confidence: float, seed: int
) -> dict[str, list[float] | None]:
    """Cluster-bootstrap intervals of (G+S)/(B+S) and G/(G+B), resampled by prompt.

    `counts_per_prompt` is `[P, 3]` (G, S, B per prompt). Votes on one prompt are not
    independent (same videos, often the same raters), so whole prompts are resampled. A resample
    with B+S = 0 has ratio +inf (the upper bound can then be inf); a resample with G+B = 0 has
    no win rate and is left out of that interval.
    """
    counts = np.asarray(counts_per_prompt, dtype=np.float64)
    if counts.size == 0 or counts.sum() == 0:
        return {"gsb_ratio": None, "win_rate": None}
    totals = resample_weights(len(counts), n_bootstrap, seed) @ counts  # [n_bootstrap, 3]
    good, same, bad = totals[:, 0], totals[:, 1], totals[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(bad + same > 0, (good + same) / (bad + same), np.inf)
        rates = np.where(good + bad > 0, good / (good + bad), np.nan)
    return {
        "gsb_ratio": percentile_interval(ratios, confidence),
        "win_rate": percentile_interval(rates, confidence),
    }


def gold_accuracy(checks: Sequence[tuple[str, bool]]) -> dict[str, dict[str, Any]]:
    """Per rater: {"correct", "total", "accuracy"} from (rater, vote == expected) pairs."""
    tally: dict[str, list[int]] = {}
    for rater, correct in checks:
        counts = tally.setdefault(rater, [0, 0])
        counts[0] += int(correct)
        counts[1] += 1
    return {
        rater: {"correct": correct, "total": total, "accuracy": correct / total}
        for rater, (correct, total) in sorted(tally.items())
    }


def ordinal_alpha(units: Mapping[Any, Mapping[str, int]]) -> tuple[float | None, str | None]:
    """Krippendorff's α on the ordinal scale Y better < same < X better.

    `units` maps a unit (a (pair, criterion)) to {rater: code}. Returns (α, None), or
    (None, why) when α is undefined: no unit rated twice, or every vote had the same value
    (no expected disagreement to compare against).
    """
    import krippendorff

    raters = sorted({rater for votes in units.values() for rater in votes})
    pairable = [votes for votes in units.values() if len(votes) >= 2]
    if not pairable:
        return None, "no pair was rated by two raters on the same criterion"
    if len({code for votes in pairable for code in votes.values()}) < 2:
        return None, "every doubly-rated vote had the same value; α is undefined"
    matrix = np.full((len(raters), len(pairable)), np.nan)
    row_of = {rater: index for index, rater in enumerate(raters)}
    for column, votes in enumerate(pairable):
        for rater, code in votes.items():
            matrix[row_of[rater], column] = code
    alpha = krippendorff.alpha(
        reliability_data=matrix,
        level_of_measurement="ordinal",
        value_domain=[Y_BETTER, SAME, X_BETTER],
    )
    return float(alpha), None


def linked_groups(compared: np.ndarray) -> list[list[int]]:
    """The connected components of arms, given a symmetric `[K, K]` comparison-count matrix."""
    unseen, groups = set(range(len(compared))), []
    while unseen:
        stack, group = [min(unseen)], []
        unseen.discard(stack[0])
        while stack:
            arm = stack.pop()
            group.append(arm)
            for other in np.flatnonzero(compared[arm] > 0):
                if int(other) in unseen:
                    unseen.discard(int(other))
                    stack.append(int(other))
        groups.append(sorted(group))
    return groups


def bradley_terry(
    wins: np.ndarray,
    virtual_ties: float = 1.0,
    compared: np.ndarray | None = None,
    tol: float = 1e-10,
    max_steps: int = 20_000,
) -> np.ndarray:
    """Bradley–Terry log-strengths by maximum likelihood (Hunter's MM algorithm, 2004).

    `wins` is `[..., K, K]`: wins[i, j] = votes where arm i beat arm j, a tie counted as half a
    win for each side. Every pair in `compared` (`[K, K]` bool; default: the pairs with a vote
    anywhere in the batch) gets `virtual_ties` extra ties (half a win each way per tie) so that
    an arm that never won, or never lost, keeps a finite strength; with n real votes per pair
    that shifts the strengths by O(1/n). Returns `[..., K]` log-strengths β, mean 0 per fit;
    P(i beats j) = 1 / (1 + exp(β_j - β_i)). Batched: bootstrap resamples fit together.
    """
    if virtual_ties <= 0:
        raise ValueError("virtual_ties must be > 0; it keeps strengths finite (default 1.0)")
    wins = np.asarray(wins, dtype=np.float64)
    batch_shape, size = wins.shape[:-2], wins.shape[-1]
    wins = wins.reshape(-1, size, size)
    if compared is None:
        compared = (wins + np.swapaxes(wins, 1, 2)).sum(axis=0) > 0
    if len(linked_groups(compared)) > 1:
        raise ValueError("Bradley–Terry needs every arm linked to the others by comparisons")
    wins = wins + np.where(compared, virtual_ties / 2.0, 0.0)
    games = wins + np.swapaxes(wins, 1, 2)  # [B, K, K] comparisons of i and j
    total_wins = wins.sum(axis=2)  # [B, K]
    log_strength = np.zeros(total_wins.shape)
    for _ in range(max_steps):
        strength = np.exp(log_strength)
        denominator = (games / (strength[:, :, None] + strength[:, None, :])).sum(axis=2)
        updated = np.log(total_wins / denominator)
        updated -= updated.mean(axis=1, keepdims=True)
        change = np.max(np.abs(updated - log_strength))
        log_strength = updated
        if change < tol:
            break
    return log_strength.reshape(*batch_shape, size)


def bradley_terry_intervals(
    wins_per_prompt: np.ndarray,
    n_bootstrap: int,
    confidence: float,
    seed: int,
    virtual_ties: float = 1.0,
) -> tuple[np.ndarray, list[list[float] | None]]:
    """Point log-strengths `[K]` and their cluster-bootstrap intervals (resampled by prompt)
    from per-prompt win matrices `[P, K, K]` (ties as half wins)."""
    wins_per_prompt = np.asarray(wins_per_prompt, dtype=np.float64)
    point = bradley_terry(wins_per_prompt.sum(axis=0), virtual_ties)
    weights = resample_weights(len(wins_per_prompt), n_bootstrap, seed)
    resampled = np.einsum("bp,pij->bij", weights, wins_per_prompt)
    # A pair compared in the full data keeps its virtual ties in every resample, even in one
    # that drew none of its prompts, so no resample loses an arm's link to the others.
    total = wins_per_prompt.sum(axis=0)
    fits = bradley_terry(resampled, virtual_ties, compared=(total + total.T) > 0)
    intervals = [percentile_interval(fits[:, arm], confidence) for arm in range(fits.shape[1])]
    return point, intervals
