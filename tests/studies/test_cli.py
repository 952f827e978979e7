"""`python -m mv2_jax.studies`: create / invite / revoke / export / report on SQLite, their
one-line errors, and the whole loop against a real server — shapes-world arms (clean renders
against blurred ones), gold checks, `auto-rate --judge shapes` through the HTTP API, export
and report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")

from mv2_jax.data.shapes import sample_clip
from mv2_jax.studies.cli import main
from mv2_jax.studies.store import StudyStore
from tests.studies.conftest import write_shapes_arm
from tests.studies.load import Server, free_port


def test_create_invite_revoke_export_report(arms, tmp_path, capsys):
    db = str(tmp_path / "s.db")
    arm_flags = [f"--arm=A={arms['A']}", f"--arm=B={arms['B']}"]
    assert (
        main(["create", "--db", db, "--name", "s", *arm_flags, "--criteria", "visual,structure"])
        == 0
    )
    assert capsys.readouterr().out == "study s: 6 pairs of A, B\n"
    assert (
        main(["invite", "--db", db, "--name", "s", "--rater", "ann", "--url", "http://h:9/"]) == 0
    )
    url = capsys.readouterr().out.strip()
    assert url.startswith("http://h:9/rate?token=") and len(url) > 60
    token = url.split("token=")[1]
    store = StudyStore(db)
    item = store.next_assignment(token)
    store.record_vote(token, item["assignment_id"], {"visual": "left", "structure": "same"})
    store.close()
    out = tmp_path / "votes.jsonl"
    assert main(["export", "--db", db, "--name", "s", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["criterion"], r["vote"]) for r in rows] == [
        ("visual", "left"),
        ("structure", "same"),
    ]
    assert set(rows[0]) == {"study", "pair_id", "prompt", "seed", "arm_left", "arm_right",
                            "video_left", "video_right", "rater", "criterion", "vote", "gold",
                            "created_at"}  # fmt: skip
    assert main(["report", "--db", db, "--name", "s", "--out", str(tmp_path / "r")]) == 0
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "report.md",
        "report.json",
        "report.png",
    }
    assert main(["revoke", "--db", db, "--name", "s", "--rater", "ann"]) == 0
    with pytest.raises(Exception, match="revoked"):
        StudyStore(db).next_assignment(token)


def test_errors_are_one_line(arms, tmp_path, capsys):
    db = str(tmp_path / "s.db")
    with pytest.raises(SystemExit) as exit_:
        main(["create", "--db", db, "--name", "s", "--arm", "A"])
    assert exit_.value.code == 2 and "write an arm as NAME=FOLDER" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["create", "--db", db, "--name", "s", "--arm", f"A={tmp_path / 'none'}"])
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["create", "--db", db, "--name", "s", "--arm", f"A={arms['A']}", "--gold", "2"])
    assert "the gold rate is in [0, 1)" in capsys.readouterr().err
    assert main(["create", "--db", db, "--name", "s", "--arm", f"A={arms['A']}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least two arms" in err
    assert main(["export", "--db", db, "--name", "x", "--out", str(tmp_path / "v.jsonl")]) == 1
    assert "no study named 'x'" in capsys.readouterr().err
    assert main(["invite", "--db", "nosuchdialect://x", "--name", "s", "--rater", "a"]) == 2
    assert "cannot open the study database" in capsys.readouterr().err


@pytest.mark.slow
def test_auto_rate_through_a_real_server_prefers_the_sharp_arm(tmp_path):
    rng = np.random.default_rng(3)
    clips = [sample_clip(rng, num_frames=8) for _ in range(6)]
    sharp = write_shapes_arm(tmp_path / "sharp", clips, blur=False)
    blurred = write_shapes_arm(tmp_path / "blurred", clips, blur=True)
    db = str(tmp_path / "s.db")
    store = StudyStore(db)
    store.create_study("loop", {"sharp": sharp, "blurred": blurred}, gold_rate=0.5,
                       media_dir=tmp_path / "media")  # fmt: skip
    token = store.invite("loop", "judge")
    store.close()
    server = Server(db, free_port(), tmp_path / "server.log")
    server.start()
    try:
        invite = f"http://127.0.0.1:{server.port}/rate?token={token}"
        command = [sys.executable, "-m", "mv2_jax.studies", "auto-rate", "--url", invite,
                   "--judge", "shapes"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr + (tmp_path / "server.log").read_text()
    store = StudyStore(db)
    rows = store.export_rows("loop")
    (rater,) = store.admin_overview()[0]["raters"]
    store.close()
    real = [r for r in rows if r["gold"] is None]
    assert len(real) == 6 and (rater["done"], rater["total"]) == (9, 9)
    sharp_wins = [r["vote"] == ("left" if r["arm_left"] == "sharp" else "right") for r in real]
    assert all(sharp_wins), real
    assert rater["gold_correct"] == rater["gold_total"] == 3  # the judge passes every check
    assert main(["report", "--db", db, "--name", "loop", "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    (comparison,) = report["results"]["all_raters"]["comparisons"]
    overall = comparison["criteria"]["overall"]
    assert (comparison["arm"], comparison["versus"]) == ("sharp", "blurred")  # the first arm
    assert (overall["G"], overall["S"], overall["B"], overall["gsb_ratio"]) == (6, 0, 0, "inf")
