"""`python -m mv2_jax.studies label`: every two samples of a prompt judged; decisive votes become
pairs that the preference builder reads, ties are left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mv2_jax.data.shapes import sample_clip
from mv2_jax.studies.cli import main
from tests.studies.conftest import write_shapes_arm


def test_the_sharp_sample_is_chosen_and_identical_ones_tie(tmp_path, capsys):
    rng = np.random.default_rng(5)
    first, second = sample_clip(rng, num_frames=8), sample_clip(rng, num_frames=8)
    # seeds 0, 1 of `first`: sharp and blurred; seeds 0, 1 of `second`: the same video twice
    write_shapes_arm(tmp_path / "a", [first, second], blur=False, seeds=[0, 0])
    write_shapes_arm(tmp_path / "b", [first], blur=True, seeds=[1])
    write_shapes_arm(tmp_path / "c", [second], blur=False, seeds=[1])
    out = tmp_path / "pairs.jsonl"
    argv = ["label", "--arm", str(tmp_path / "a"), "--arm", str(tmp_path / "b"),
            "--arm", str(tmp_path / "c"), "--criterion", "visual", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "1 pairs (1 ties left out) from 2 judged" in capsys.readouterr().out
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["chosen"].startswith(str(tmp_path / "a")) and "/b/" in row["rejected"]
    assert row["criterion"] == "visual"
    chosen_is_left = row["chosen"] < row["rejected"]  # the judge saw a's video on the left
    scores = row["scores"]["left" if chosen_is_left else "right"]
    other = row["scores"]["right" if chosen_is_left else "left"]
    assert scores["visual"] > other["visual"] + 0.06  # beyond the judge's margin


def test_pairs_feed_the_preference_builder(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from mv2_jax.data.preferences import jsonl_pairs

    rng = np.random.default_rng(6)
    clip = sample_clip(rng, num_frames=8)
    write_shapes_arm(tmp_path / "a", [clip], blur=False, seeds=[0])
    write_shapes_arm(tmp_path / "b", [clip], blur=True, seeds=[1])
    out = tmp_path / "pairs.jsonl"
    assert main(["label", "--arm", str(tmp_path / "a"), "--arm", str(tmp_path / "b"),
                 "--out", str(out)]) == 0  # fmt: skip
    (pair,) = list(jsonl_pairs(out))
    assert pair["chosen"].parent.name == "a" and pair["rejected"].parent.name == "b"


def test_one_sample_per_prompt_is_an_error(tmp_path, capsys):
    write_shapes_arm(tmp_path / "a", [sample_clip(np.random.default_rng(7), num_frames=8)], False)
    assert main(["label", "--arm", str(tmp_path / "a"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "no prompt has two samples" in capsys.readouterr().err
