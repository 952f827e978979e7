"""Tests of the study report (mv2_jax.studies.report, stats, report_render): counts and ratios by
hand, the cluster bootstrap, gold exclusion, Krippendorff's α against a hand computation,
Bradley–Terry recovery, the written files and the edge cases."""

from __future__ import annotations

import itertools
import json
import math
import zlib

import numpy as np
import pytest

pytest.importorskip("krippendorff")
pytest.importorskip("matplotlib")

from mv2_jax.studies import stats
from mv2_jax.studies.report import report, write_report

VOTE_FOR = {"x": 0, "same": 1, "y": 2}  # index into (x's side, "same", y's side)


def row(prompt, rater, x, y, says, *, mirrored=False, criterion="overall", pair_id=None,
        gold=None):  # fmt: skip
    """One export row in which `rater` says `says` ("x" | "same" | "y" better) about x vs y;
    `mirrored` puts y on the left, as the page's random placement does."""
    left, right = (y, x) if mirrored else (x, y)
    sides = ("right", "same", "left") if mirrored else ("left", "same", "right")
    return {
        "study": "s",
        "pair_id": pair_id if pair_id is not None else zlib.crc32(f"{prompt}|{x}|{y}".encode()),
        "prompt": prompt,
        "seed": 0,
        "arm_left": left,
        "arm_right": right,
        "video_left": f"{left}.mp4",
        "video_right": f"{right}.mp4",
        "rater": rater,
        "criterion": criterion,
        "vote": sides[VOTE_FOR[says]],
        "gold": gold,
        "created_at": "2026-01-01T00:00:00+00:00",
    }


def gsb_rows(good, same, bad, x="A", y="B", prompts=4, rater="r1", **kwargs):
    """`good` + `same` + `bad` votes of x vs y spread over `prompts` prompts, every other one
    mirrored."""
    says = ["x"] * good + ["same"] * same + ["y"] * bad
    return [
        row(f"p{index % prompts}", rater, x, y, word, mirrored=index % 2 == 1, **kwargs)
        for index, word in enumerate(says)
    ]


def gold_rows(rater, correct, total):
    """`total` attention checks (same video both sides, expect "same"), `correct` passed."""
    return [
        {**row("gold", rater, "A", "A", "same" if i < correct else "x"), "gold": "same"}
        for i in range(total)
    ]


def tally_of(result, section="gold_passed", index=0, criterion="overall"):
    return result["results"][section]["comparisons"][index]["criteria"][criterion]


def test_counts_and_ratios_by_hand():
    rows = gsb_rows(5, 2, 3)
    tally = tally_of(report(rows, n_bootstrap=200))
    assert (tally["G"], tally["S"], tally["B"], tally["votes"], tally["prompts"]) == (
        5,
        2,
        3,
        10,
        4,
    )
    assert tally["gsb_ratio"] == pytest.approx(7 / 5)
    assert tally["win_rate"] == pytest.approx(5 / 8)
    # The other arm as "ours": the same votes from B's side.
    flipped = report(rows, reference="B", n_bootstrap=200)
    comparison = flipped["results"]["gold_passed"]["comparisons"][0]
    assert (comparison["arm"], comparison["versus"]) == ("B", "A")
    assert (comparison["criteria"]["overall"]["G"], comparison["criteria"]["overall"]["B"]) == (
        3,
        5,
    )
    assert comparison["criteria"]["overall"]["gsb_ratio"] == pytest.approx(5 / 7)


def test_gold_rows_never_enter_the_tallies():
    rows = gsb_rows(5, 2, 3) + gold_rows("r1", correct=4, total=4)
    tally = tally_of(report(rows, n_bootstrap=100))
    assert (tally["G"], tally["S"], tally["B"]) == (5, 2, 3)


def votes_over_prompts(prompts, seed):
    """Votes (3 raters per prompt) drawn with P(G, S, B) = (.5, .2, .3)."""
    rng = np.random.default_rng(seed)
    choices = rng.choice(["x", "same", "y"], p=[0.5, 0.2, 0.3], size=(prompts, 3))
    return [
        row(f"p{p}", f"r{r}", "A", "B", choices[p, r], mirrored=bool((p + r) % 2))
        for p in range(prompts)
        for r in range(3)
    ]


def test_bootstrap_interval_contains_estimate_and_shrinks_with_prompts():
    widths = []
    for prompts in (20, 320):
        tally = tally_of(report(votes_over_prompts(prompts, seed=1), n_bootstrap=1000))
        for name in ("gsb_ratio", "win_rate"):
            low, high = tally[f"{name}_ci"]
            assert low < tally[name] < high
        widths.append(tally["gsb_ratio_ci"][1] - tally["gsb_ratio_ci"][0])
    # Sixteen times the prompts: about a quarter of the width.
    assert widths[1] < 0.4 * widths[0]


def test_bootstrap_resamples_whole_prompts():
    # Two prompts, ten votes each, one all G and one all B. Resampling prompts draws {G, G}
    # (ratio ∞), {G, B} (1) or {B, B} (0), each pair a quarter of the time or more; resampling
    # single votes would give a tight interval around 1.
    rows = [row("good", f"r{i}", "A", "B", "x") for i in range(10)]
    rows += [row("bad", f"r{i}", "A", "B", "y") for i in range(10)]
    tally = tally_of(report(rows, n_bootstrap=2000))
    assert tally["gsb_ratio"] == 1.0
    assert tally["gsb_ratio_ci"] == [0.0, math.inf]
    assert tally["win_rate_ci"] == [0.0, 1.0]


def test_raters_below_the_gold_threshold_are_listed_and_excluded():
    rows = gsb_rows(6, 0, 0, rater="careful") + gold_rows("careful", 5, 5)
    rows += gsb_rows(0, 0, 4, rater="careless") + gold_rows("careless", 3, 4)  # 75 %
    rows += gsb_rows(2, 1, 0, rater="unchecked")  # no gold checks: kept
    result = report(rows, n_bootstrap=100)
    assert result["gold"]["excluded"] == ["careless"]
    accuracy = {item["rater"]: item["accuracy"] for item in result["gold"]["raters"]}
    assert accuracy == {"careful": 1.0, "careless": 0.75}
    kept, everyone = tally_of(result), tally_of(result, "all_raters")
    assert (kept["G"], kept["S"], kept["B"]) == (8, 1, 0)
    assert (everyone["G"], everyone["S"], everyone["B"]) == (8, 1, 4)
    assert kept["gsb_ratio"] == pytest.approx(9 / 1)
    assert everyone["gsb_ratio"] == pytest.approx(9 / 5)
    assert result["results"]["gold_passed"]["raters"] == ["careful", "unchecked"]
    # A lower threshold keeps everyone.
    assert report(rows, gold_threshold=0.7, n_bootstrap=100)["gold"]["excluded"] == []


def test_alpha_matches_a_hand_computation():
    # Units (pair, criterion), two raters, votes coded from A's side: X (A better) = 2,
    # S = 1, Y = 0.  u1: (2, 2), u2: (1, 1), u3: (2, 1), u4: (0, 0); u5 rated once (unpairable).
    # Counts n0 = 2, n1 = 3, n2 = 3, n = 8; ordinal δ²01 = 2.5², δ²12 = 3², δ²02 = 5.5².
    # D_o = (9 + 9) / 8 = 2.25; D_e = 2 (6·6.25 + 9·9 + 6·30.25) / (8·7) = 600 / 56.
    # α = 1 - 2.25 · 56 / 600 = 0.79.  Rater r2 saw u1 and u4 mirrored: screen sides disagree,
    # arms agree.
    votes = [("u1", "x", "x"), ("u2", "same", "same"), ("u3", "x", "same"), ("u4", "y", "y")]
    rows = []
    for unit, (prompt, first, second) in enumerate(votes):
        rows.append(row(prompt, "r1", "A", "B", first, pair_id=unit))
        rows.append(row(prompt, "r2", "A", "B", second, pair_id=unit, mirrored=unit in (0, 3)))
    rows.append(row("u5", "r1", "A", "B", "y", pair_id=9))
    agreement = report(rows, n_bootstrap=50)["results"]["all_raters"]["agreement"]
    assert agreement["alpha"] == pytest.approx(0.79, abs=1e-12)
    assert (agreement["units"], agreement["units_rated_twice"]) == (5, 4)
    assert agreement["per_criterion"]["overall"]["alpha"] == pytest.approx(0.79, abs=1e-12)


def test_bradley_terry_by_hand():
    # A beat B 3 times, B beat A once; one virtual tie adds half a win to each:
    # strengths 3.5 : 1.5, so β_A - β_B = log(3.5 / 1.5), mean 0.
    beta = stats.bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]), virtual_ties=1.0)
    assert beta == pytest.approx([0.5 * math.log(3.5 / 1.5), -0.5 * math.log(3.5 / 1.5)])


def test_bradley_terry_recovers_known_strengths():
    truth = {"A": 0.6, "B": 0.0, "C": -0.6}
    rng = np.random.default_rng(3)
    rows = []
    for prompt in range(300):
        for x, y in itertools.combinations(truth, 2):
            for rater in ("r1", "r2"):
                x_wins = rng.random() < 1 / (1 + math.exp(truth[y] - truth[x]))
                rows.append(row(f"p{prompt}", rater, x, y, "x" if x_wins else "y"))
    fit = report(rows, n_bootstrap=400)["results"]["gold_passed"]["bradley_terry"]["overall"]
    assert fit["note"] is None
    for arm in fit["arms"]:
        low, high = arm["log_strength_ci"]
        assert low < truth[arm["arm"]] < high
        assert arm["log_strength"] == pytest.approx(truth[arm["arm"]], abs=0.15)
        assert high - low < 0.4


def test_bradley_terry_of_ties_only_is_even_and_of_unlinked_arms_is_refused():
    rows = [row(f"p{i}", "r1", x, y, "same") for i in range(5) for x, y in (("A", "B"), ("B", "C"))]
    fit = report(rows, n_bootstrap=50)["results"]["gold_passed"]["bradley_terry"]["overall"]
    assert [arm["log_strength"] for arm in fit["arms"]] == pytest.approx([0, 0, 0], abs=1e-9)
    rows = gsb_rows(3, 0, 1, "A", "B") + gsb_rows(2, 1, 1, "C", "D")
    fit = report(rows, n_bootstrap=50)["results"]["gold_passed"]["bradley_terry"]["overall"]
    assert fit["arms"] == [] and "A, B | C, D" in fit["note"]
    assert (
        report(gsb_rows(1, 1, 1), n_bootstrap=10)["results"]["all_raters"]["bradley_terry"] is None
    )


def test_files_written(tmp_path):
    from PIL import Image

    rows = gsb_rows(5, 2, 3, criterion="visual") + gsb_rows(4, 0, 0, criterion="structure")
    rows += gsb_rows(3, 1, 1, "A", "C", criterion="visual")
    rows += gsb_rows(3, 1, 1, "A", "C", criterion="structure")
    result = write_report(rows, tmp_path / "out", n_bootstrap=200)
    structure = tally_of(result, criterion="structure")
    assert structure["gsb_ratio"] == math.inf and "won every vote" in structure["note"]
    text = (tmp_path / "out" / "report.json").read_text()
    # Strict JSON: ∞ as "inf", no Infinity/NaN tokens.
    saved = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))
    assert saved["results"]["gold_passed"]["comparisons"][0]["criteria"]["structure"][
        "gsb_ratio"
    ] == "inf"  # fmt: skip
    assert saved["criteria"] == ["visual", "structure"]  # CRITERIA order, not row order
    markdown = (tmp_path / "out" / "report.md").read_text()
    header = "| Comparison | Good (G) | Same (S) | Bad (B) | (G+S)/(B+S) [95 % CI] |"
    assert header in markdown
    assert "| A vs B | 9 | 2 | 3 | 2.20 [" in markdown  # pooled over both criteria
    assert "| A vs B | 4 | 0 | 0 | ∞" in markdown  # the structure table
    with Image.open(tmp_path / "out" / "report.png") as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_no_votes_gives_an_empty_report(tmp_path):
    result = write_report([], tmp_path, reference="ours", n_bootstrap=10)
    assert result["arms"] == [] and result["results"]["all_raters"]["comparisons"] == []
    assert result["results"]["all_raters"]["agreement"]["alpha"] is None
    assert "No votes on real pairs yet." in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 0


def test_a_criterion_with_only_ties(tmp_path):
    rows = gsb_rows(0, 6, 0, rater="r1") + gsb_rows(0, 6, 0, rater="r2")
    result = write_report(rows, tmp_path, n_bootstrap=100)
    tally = tally_of(result)
    assert tally["gsb_ratio"] == 1.0 and tally["gsb_ratio_ci"] == [1.0, 1.0]
    assert tally["win_rate"] is None and tally["win_rate_ci"] is None
    assert "only ties" in tally["note"]
    agreement = result["results"]["all_raters"]["agreement"]
    assert agreement["alpha"] is None and "same value" in agreement["note"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| A vs B | 0 | 12 | 0 | 1.00 [1.00, 1.00] | — |" in markdown
    assert "nan" not in markdown.lower()


def test_bad_rows_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="vote 'maybe'"):
        report([{**gsb_rows(1, 0, 0)[0], "vote": "maybe"}])
    with pytest.raises(ValueError, match="lacks rater"):
        report([{k: v for k, v in gsb_rows(1, 0, 0)[0].items() if k != "rater"}])
    with pytest.raises(ValueError, match="mix studies"):
        report([*gsb_rows(1, 0, 0), {**gsb_rows(1, 0, 0)[0], "study": "other"}])
    with pytest.raises(ValueError, match="not an arm of the study; its arms are A, B"):
        report(gsb_rows(1, 0, 0), reference="Z")
    with pytest.raises(ValueError, match="arms C"):
        report(gsb_rows(1, 0, 0, "A", "C"), arms=["A", "B"])


def test_the_study_order_of_arms_picks_ours():
    rows = gsb_rows(2, 0, 1, "A", "B") + gsb_rows(1, 0, 1, "A", "C") + gsb_rows(1, 0, 2, "B", "C")
    result = report(rows, arms=["C", "A", "B"], n_bootstrap=20)
    pairs = [(c["arm"], c["versus"]) for c in result["results"]["all_raters"]["comparisons"]]
    assert result["reference"] == "C" and pairs == [("C", "A"), ("C", "B"), ("A", "B")]
    assert tally_of(result, index=1)["G"] == 2  # C beat B twice
