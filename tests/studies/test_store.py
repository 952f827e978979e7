"""The study store, on SQLite and on a real PostgreSQL server: pairing, gold checks, tokens,
the vote transaction and its errors, the schema version, and concurrent votes on one
assignment (exactly one stored)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from mv2_jax.studies.store import (
    AlreadyVoted,
    BadRequest,
    Forbidden,
    NotFound,
    StudyStore,
    Unauthorized,
    hash_token,
)
from tests.studies.conftest import PROMPTS, write_arm


@pytest.fixture
def store(store_url):
    store = StudyStore(store_url)
    yield store
    store.close()


def _vote_all(store, token, choose=lambda item: "left") -> list[dict]:
    seen = []
    while not (item := store.next_assignment(token)).get("finished"):
        store.record_vote(token, item["assignment_id"], {c: choose(item) for c in item["criteria"]})
        seen.append(item)
    return seen


def test_a_study_pairs_arms_and_each_vote_is_exported_once(store, arms, tmp_path):
    summary = store.create_study("s", arms, criteria="visual,consistency")
    assert summary == {"study": "s", "arms": ["A", "B"], "pairs": 6, "gold": 0}
    token = store.invite("s", "ann")
    first = store.next_assignment(token)
    assert (first["done"], first["total"], first["criteria"]) == (0, 6, ["visual", "consistency"])
    assert first["left"]["url"].startswith("/media/") and str(tmp_path) not in str(first)
    seen = _vote_all(store, token)
    assert len(seen) == 6
    assert store.next_assignment(token) == {"finished": True, "done": 6, "total": 6}
    assert {(s["prompt"]) for s in seen} == set(PROMPTS)
    rows = store.export_rows("s")
    assert len(rows) == 12 and {r["criterion"] for r in rows} == {"visual", "consistency"}
    for row in rows:  # the left side is what the rater saw on the left
        assert {row["arm_left"], row["arm_right"]} == {"A", "B"}
        assert row["video_left"].startswith(str(arms[row["arm_left"]]))
        assert row["vote"] == "left" and row["gold"] is None and row["rater"] == "ann"
    # both sides occur on the left over six assignments (random, so allow the rare 0)
    media = {store.media_path(s["left"]["url"].removeprefix("/media/")).parent.name for s in seen}
    assert media <= {"A", "B"}
    assert store.media_path("../../etc/passwd") is None


def test_arms_that_do_not_cover_the_same_items_are_refused(store, arms, tmp_path):
    write_arm(tmp_path / "C", [(PROMPTS[0], 0)], 10)
    with pytest.raises(BadRequest, match=r"arm C lacks 5: 'a blue square moving up' seed 0"):
        store.create_study("s", {**arms, "C": tmp_path / "C"})
    with pytest.raises(BadRequest, match="at least two arms"):
        store.create_study("s", {"A": arms["A"]})
    with pytest.raises(ValueError, match="unknown criteria"):
        store.create_study("s", arms, criteria="visual,beauty")
    store.create_study("s", arms)
    with pytest.raises(BadRequest, match="exists already"):
        store.create_study("s", arms)
    assert store.studies() == ["s"]


def test_three_arms_give_every_pairing(store, arms, tmp_path):
    items = [(p, s) for p in PROMPTS for s in (0, 1)]
    arms = {**arms, "C": write_arm(tmp_path / "C", items, 150)}
    assert store.create_study("s", arms)["pairs"] == 18
    token = store.invite("s", "bo")
    seen = _vote_all(store, token, choose=lambda item: "same")
    pairs = {frozenset((r["arm_left"], r["arm_right"])) for r in store.export_rows("s")}
    assert len(seen) == 18 and pairs == {frozenset(p) for p in (("A", "B"), ("A", "C"), ("B", "C"))}


def test_gold_checks_expect_the_original_or_same(store, arms, tmp_path):
    summary = store.create_study("g", arms, gold_rate=0.5, media_dir=tmp_path / "media")
    assert summary["gold"] == 3 and len(list((tmp_path / "media").glob("*.mp4"))) == 2
    token = store.invite("g", "cy")
    # an attentive rater: votes the expected answer on gold pairs
    rows_before = store.export_rows("g")
    assert rows_before == []

    def attentive(item):
        left = store.media_path(item["left"]["url"].removeprefix("/media/"))
        right = store.media_path(item["right"]["url"].removeprefix("/media/"))
        if left == right:
            return "same"
        if "media" in (left.parent.name, right.parent.name):
            return "right" if left.parent.name == "media" else "left"
        return "left"

    _vote_all(store, token, attentive)
    gold = [r for r in store.export_rows("g") if r["gold"] is not None]
    assert len(gold) == 3 and all(r["vote"] == r["gold"] for r in gold)
    assert {r["gold"] for r in gold} >= {"same"}
    degraded = [r for r in gold if r["gold"] != "same"]
    assert all(r[f"arm_{'right' if r['gold'] == 'left' else 'left'}"].endswith("~degraded")
               for r in degraded)  # fmt: skip
    (cy,) = store.admin_overview()[0]["raters"]
    assert (cy["gold_correct"], cy["gold_total"], cy["done"], cy["total"]) == (3, 3, 9, 9)


def test_vote_errors_and_the_second_vote(store, arms):
    store.create_study("s", arms)
    ann, bo = store.invite("s", "ann"), store.invite("s", "bo")
    item = store.next_assignment(ann)
    aid = item["assignment_id"]
    with pytest.raises(Unauthorized):
        store.next_assignment("forged-token")
    with pytest.raises(Unauthorized):
        store.record_vote("", aid, {"overall": "left"})
    with pytest.raises(Forbidden, match="another rater"):
        store.record_vote(bo, aid, {"overall": "left"})
    with pytest.raises(NotFound):
        store.record_vote(ann, 10_000, {"overall": "left"})
    with pytest.raises(BadRequest, match=r"missing criteria \['overall'\]"):
        store.record_vote(ann, aid, {})
    with pytest.raises(BadRequest, match=r"unknown criteria \['visual'\]"):
        store.record_vote(ann, aid, {"overall": "left", "visual": "left"})
    with pytest.raises(BadRequest, match="must be one of"):
        store.record_vote(ann, aid, {"overall": "better"})
    with pytest.raises(BadRequest, match="integer"):
        store.record_vote(ann, "1", {"overall": "left"})
    store.record_vote(ann, aid, {"overall": "right"})
    with pytest.raises(AlreadyVoted):
        store.record_vote(ann, aid, {"overall": "left"})
    assert [r["vote"] for r in store.export_rows("s")] == ["right"]
    store.revoke("s", "ann")
    with pytest.raises(Unauthorized, match="revoked"):
        store.next_assignment(ann)
    again = store.invite("s", "ann")  # a new token, the queue and the vote kept
    with pytest.raises(Unauthorized):
        store.next_assignment(ann)
    assert store.next_assignment(again)["done"] == 1
    with pytest.raises(NotFound, match="no rater 'dee'"):
        store.revoke("s", "dee")
    with pytest.raises(NotFound, match=r"no study named 'x' \(studies: s\)"):
        store.invite("x", "ann")


def test_tokens_are_stored_hashed(tmp_path, arms):
    store = StudyStore(str(tmp_path / "study.db"))
    store.create_study("s", arms)
    token = store.invite("s", "ann")
    with sqlite3.connect(tmp_path / "study.db") as db:
        (stored,) = db.execute("select token_hash from raters").fetchone()
        assert stored == hash_token(token) and stored != token
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)


def test_max_pairs_spreads_pairs_over_raters(store, arms):
    store.create_study("s", arms)
    tokens = [store.invite("s", f"r{i}", max_pairs=2) for i in range(3)]
    counts = [store.next_assignment(t)["total"] for t in tokens]
    assert counts == [2, 2, 2]
    raters = store.admin_overview()[0]["raters"]
    assert [r["total"] for r in raters] == [2, 2, 2]


def test_concurrent_votes_on_one_assignment_store_one(store, arms):
    store.create_study("s", arms)
    token = store.invite("s", "ann")
    aid = store.next_assignment(token)["assignment_id"]
    outcomes, barrier = [], threading.Barrier(8)

    def vote(choice):
        barrier.wait()
        try:
            store.record_vote(token, aid, {"overall": choice})
            outcomes.append("ok")
        except AlreadyVoted:
            outcomes.append("409")

    choices = ["left", "right"] * 4
    threads = [threading.Thread(target=vote, args=(choice,)) for choice in choices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["409"] * 7 + ["ok"] and len(store.export_rows("s")) == 1


def test_schema_version_is_checked(tmp_path, arms):
    StudyStore(str(tmp_path / "a.db")).close()
    with sqlite3.connect(tmp_path / "a.db") as db:
        assert db.execute("select version from schema_version").fetchall() == [(1,)]
        db.execute("update schema_version set version = 99")
    with pytest.raises(RuntimeError, match="schema version 99, newer"):
        StudyStore(str(tmp_path / "a.db"))
    with sqlite3.connect(tmp_path / "b.db") as db:
        db.execute("create table studies (id integer)")
    with pytest.raises(RuntimeError, match="no schema_version table"):
        StudyStore(str(tmp_path / "b.db"))


def test_per_aspect_gold_checks_expect_only_what_they_break(store, arms, tmp_path):
    """A shuffled copy checks overall + consistency, a blurred one overall + visual; on the
    other criteria any vote is right ("any"), and the rater's accuracy leaves them out."""
    store.create_study(
        "g", arms, criteria="overall,visual,consistency,structure", gold_rate=0.5,
        media_dir=tmp_path / "media", seed=1,
    )  # fmt: skip
    token = store.invite("g", "cy")
    _vote_all(store, token, choose=lambda item: "same")
    gold = [r for r in store.export_rows("g") if r["gold"] is not None]
    kinds = {}
    for row in gold:
        side = "left" if "~degraded" in row["arm_left"] else "right"
        copy = Path(row[f"video_{side}"]).stem  # gold0001-shuffled.mp4
        kind = copy.split("-")[1] if "~degraded" in row[f"arm_{side}"] else "same"
        kinds.setdefault(kind, {})[row["criterion"]] = row["gold"]
    assert set(kinds["same"].values()) == {"same"}
    assert kinds["shuffled"]["visual"] == kinds["shuffled"]["structure"] == "any"
    assert kinds["shuffled"]["overall"] == kinds["shuffled"]["consistency"] != "any"
    assert kinds["blurred"]["consistency"] == kinds["blurred"]["structure"] == "any"
    assert kinds["blurred"]["overall"] == kinds["blurred"]["visual"] != "any"
    (cy,) = store.admin_overview()[0]["raters"]
    assert (cy["gold_correct"], cy["gold_total"]) == (4, 8)  # "same" right only on the same pair
