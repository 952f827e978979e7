"""`python -m mv2_jax.evaluation.compare`: paired differences of two evaluation runs with a
bootstrap interval, over the samples both have, per group."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mv2_jax.evaluation.compare import compare, main, paired_difference, read_samples


def _run(folder, values, heldout_every=3):
    folder.mkdir()
    lines = [json.dumps({"kind": "settings"})]
    for i, value in enumerate(values):
        record = {"kind": "sample", "key": f"p{i}", "heldout": i % heldout_every == 0}
        lines.append(json.dumps({**record, "travel_fraction": value, "motion": value > 0.3}))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_the_interval_covers_a_known_shift_and_excludes_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(0.35, 0.05, 200)
    b = a - 0.17 + rng.normal(0, 0.01, 200)  # a halved-ish travel, same samples
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(np.mean(b - a))
    assert r["low"] < -0.17 < r["high"] < 0 and r["high"] - r["low"] < 0.01


def test_compare_pairs_by_key_and_group(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.3, 0.4, 0.35, 0.5])
    b = _run(tmp_path / "b", [0.1, 0.2, 0.2])  # one sample fewer: compared on the three shared
    rows = compare(read_samples(a), read_samples(b), ["travel_fraction", "motion"])
    assert rows["travel_fraction"]["n"] == 3
    assert rows["travel_fraction"]["diff"] == pytest.approx(-0.55 / 3)
    assert rows["motion"]["a"] == pytest.approx(2 / 3) and rows["motion"]["b"] == 0
    held = compare(read_samples(a), read_samples(b), ["travel_fraction"], "heldout")
    assert held["travel_fraction"]["n"] == 1  # p0 only
    assert main([str(a), str(b), "--metric", "travel_fraction"]) == 0
    assert "| travel_fraction | 3 |" in capsys.readouterr().out


def test_runs_without_shared_samples_or_results_are_errors(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.3])
    (tmp_path / "b").mkdir()
    assert main([str(a), str(tmp_path / "b")]) == 1
    assert "no results; run evaluate.py" in capsys.readouterr().err
    with pytest.raises(ValueError, match="share no sample"):
        compare(read_samples(a), {}, ["travel_fraction"])
