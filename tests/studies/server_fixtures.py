"""What the study server's tests share: a real StudyStore on SQLite with one study ("s1": arms A
and B, criteria visual and consistency), a TestClient on the app over it, and a vote body.
tests/studies/conftest.py makes the `server_store` / `client` fixtures of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ADMIN = "admin-secret-for-tests"
STUDY = "s1"


@contextmanager
def open_store(tmp_path: Path, arms: dict[str, Path]) -> Iterator:
    from mv2_jax.studies.store import StudyStore

    store = StudyStore(str(tmp_path / "study.db"))
    store.create_study(STUDY, arms, criteria=["visual", "consistency"], seed=0)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_client(store, admin_token: str | None = ADMIN) -> Iterator:
    from fastapi.testclient import TestClient

    from mv2_jax.studies.server import create_app

    with TestClient(create_app(store, admin_token=admin_token)) as client:
        yield client


def vote_body(token: str, assignment_id: int, votes: dict | None = None) -> dict:
    """A well-formed vote for study s1 (visual: left, consistency: same unless `votes`)."""
    votes = votes if votes is not None else {"visual": "left", "consistency": "same"}
    return {"token": token, "assignment_id": assignment_id, "votes": votes}
