"""32 simulated raters vote through the API while the server is killed with SIGKILL twice and
restarted: every vote answered 200 is stored exactly once, with its value; none is stored
twice; every assignment ends with its vote."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")

from tests.studies.load import Server, free_port, make_study, run_raters, stored_votes

RATERS, ITEMS = 32, 12

pytestmark = pytest.mark.slow


def test_acknowledged_votes_survive_sigkill(tmp_path):
    db = str(tmp_path / "study.db")
    tokens = make_study(tmp_path, db, ITEMS, RATERS)
    server = Server(db, free_port(), tmp_path / "server.log")
    server.start()
    total = RATERS * ITEMS
    try:
        outcome, _, killed_at = run_raters(server, tokens, kill_after=[total // 3, 2 * total // 3])
    finally:
        server.stop()
    assert outcome.unexpected == []
    assert all(0 < k < total for k in killed_at), killed_at  # the kills hit a running study
    stored = stored_votes(db)
    assert all(len(votes) == 1 for votes in stored.values())  # never two rows
    for assignment, vote in outcome.acknowledged.items():  # every 200 is on disk, as sent
        assert stored.get(assignment) == [vote], assignment
    assert len(stored) == total  # every rater finished their queue
    assert outcome.errors > 0  # requests did meet a dead server
