"""The study server's pages and guards through FastAPI's TestClient on a real StudyStore:
the admin routes (token required, off without one, gold accuracy, the live G/S/B table), the
rating and instructions pages, security headers on every kind of response, and tokens kept out
of the access log."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")

from mv2_jax.studies.admin_table import live_table
from mv2_jax.studies.http_guards import DropQueryString
from mv2_jax.studies.store import StudyStore
from tests.studies.server_fixtures import (
    ADMIN,
    STUDY,
    open_client,
    vote_body,
)


@pytest.fixture
def store(server_store):
    return server_store


def test_admin_routes_need_the_admin_token(client, store):
    token = store.invite("s1", "ann")
    store.invite("s1", "bob")
    for _ in range(3):
        assignment = client.get("/api/next", params={"token": token}).json()["assignment_id"]
        client.post("/api/vote", json=vote_body(token, assignment))
    for route in ("/admin", "/api/admin"):
        assert client.get(route).status_code == 401
        assert client.get(route, params={"token": ADMIN + "x"}).status_code == 401
        assert client.get(route, params={"token": token}).status_code == 401  # a rater's token
    answer = client.get("/api/admin", params={"token": ADMIN})
    assert answer.status_code == 200
    (study,) = answer.json()["studies"]
    raters = {r["rater"]: r for r in study["raters"]}
    assert (raters["ann"]["done"], raters["ann"]["total"]) == (3, 6)
    assert (raters["bob"]["done"], raters["bob"]["total"]) == (0, 6)
    assert study["votes"] == 6
    # The live table counts exactly the stored votes, each criterion on its own.
    table = {row["criterion"]: row for row in study["table"]}
    assert {(r["arm_a"], r["arm_b"]) for r in study["table"]} == {("A", "B")}
    assert [table["consistency"][k] for k in "GSB"] == [0, 3, 0]
    left_is_a = sum(
        r["arm_left"] == "A" for r in store.export_rows(STUDY) if r["criterion"] == "visual"
    )
    assert (table["visual"]["G"], table["visual"]["B"]) == (left_is_a, 3 - left_is_a)
    bearer = client.get("/api/admin", headers={"authorization": f"Bearer {ADMIN}"})
    assert bearer.status_code == 200 and bearer.json() == answer.json()
    page = client.get("/admin", params={"token": ADMIN})
    assert page.status_code == 200 and "ann" in page.text and "bob" in page.text
    assert "A vs B" in page.text


def test_admin_shows_gold_check_accuracy(tmp_path, arms):
    gold_store = StudyStore(str(tmp_path / "gold.db"))
    gold_store.create_study("g", arms, gold_rate=0.5, media_dir=tmp_path / "gold", seed=3)
    token = gold_store.invite("g", "ann")
    with open_client(gold_store) as web:
        while not (body := web.get("/api/next", params={"token": token}).json()).get("finished"):
            vote = vote_body(token, body["assignment_id"], {"overall": "same"})
            assert web.post("/api/vote", json=vote).status_code == 200
        admin = web.get("/api/admin", params={"token": ADMIN}).json()
        page = web.get("/admin", params={"token": ADMIN}).text
    expected = [row["gold"] for row in gold_store.export_rows("g") if row["gold"] is not None]
    gold_store.close()
    assert len(expected) == 3 and 0 < expected.count("same") < 3  # 6 real pairs at rate 0.5
    (ann,) = admin["studies"][0]["raters"]
    assert (ann["done"], ann["total"]) == (9, 9)
    assert (ann["gold_correct"], ann["gold_total"]) == (expected.count("same"), 3)
    # The live table leaves the checks out: the 6 real pairs, all "same".
    (row,) = admin["studies"][0]["table"]
    assert [row[k] for k in ("G", "S", "B", "gs_over_bs", "win_rate")] == [0, 6, 0, 1.0, None]
    accuracy = round(100 * expected.count("same") / 3)
    assert f"{expected.count('same')} / 3" in page and f"{accuracy} %" in page


def test_admin_routes_are_404_without_an_admin_token(store):
    with open_client(store, admin_token=None) as web:
        for route in ("/admin", "/api/admin"):
            assert web.get(route).status_code == 404
            assert web.get(route, params={"token": ""}).status_code == 404
            assert web.get(route, params={"token": "None"}).status_code == 404


def test_live_table_counts_from_arm_a_point_of_view():
    def row(left, right, vote, criterion="overall", gold=None):
        return {
            "arm_left": left,
            "arm_right": right,
            "vote": vote,
            "criterion": criterion,
            "gold": gold,
        }

    rows = [
        row("A", "B", "left"),  # G for A
        row("B", "A", "right"),  # G for A
        row("B", "A", "left"),  # B for A
        row("A", "B", "same"),  # S
        row("A", "A", "same", gold="same"),  # an attention check: not counted
        row("B", "C", "left"),  # B vs C: G for B
    ]
    (ab, bc) = live_table(rows, arms=["A", "B", "C"])
    assert (ab["arm_a"], ab["arm_b"], ab["G"], ab["S"], ab["B"]) == ("A", "B", 2, 1, 1)
    assert ab["gs_over_bs"] == pytest.approx(1.5) and ab["win_rate"] == pytest.approx(2 / 3)
    assert (bc["arm_a"], bc["arm_b"], bc["G"], bc["gs_over_bs"], bc["win_rate"]) == (
        "B",
        "C",
        1,
        None,
        1.0,
    )
    (ba,) = live_table(rows[:4], arms=["B", "A"])  # the study lists B first: B's point of view
    assert (ba["arm_a"], ba["G"], ba["S"], ba["B"]) == ("B", 1, 1, 2)


SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def test_security_headers_on_every_kind_of_response(client, store):
    token = store.invite("s1", "ann")
    media = client.get("/api/next", params={"token": token}).json()["left"]["url"]
    responses = {
        "page": client.get("/rate", params={"token": token}),
        "instructions": client.get("/instructions"),
        "api": client.get("/api/next", params={"token": token}),
        "error": client.get("/api/next", params={"token": "forged"}),
        "413": client.post("/api/vote", content=b"x" * 20000),
        "static": client.get("/static/rate.js"),
        "media": client.get(media),
    }
    for name, response in responses.items():
        for header, value in SECURITY.items():
            assert response.headers.get(header) == value, (name, header)
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, name
        assert "unsafe-inline" not in csp and "http" not in csp, name
    for name in ("page", "api", "error"):
        assert responses[name].headers["cache-control"] == "no-store", name
    assert responses["413"].status_code == 413


def test_pages_rate_and_instructions(client, store):
    token = store.invite("s1", "ann")
    page = client.get("/rate", params={"token": token})
    assert page.status_code == 200
    assert '<script src="/static/rate.js"' in page.text and "<video" in page.text
    assert token not in page.text  # the page reads its token from its own URL
    assert "Frame quality and visual appeal" in page.text  # the criteria's help, as JSON
    for bad, status in (({"token": "forged"}, 401), ({}, 400)):
        refused = client.get("/rate", params=bad)
        assert refused.status_code == status and "invitation" in refused.text
    store.revoke("s1", "ann")
    assert client.get("/rate", params={"token": token}).status_code == 401
    guide = client.get("/instructions")
    assert guide.status_code == 200
    for aspect in ("Frame quality and visual appeal", "Temporal consistency", "Structural errors"):
        assert aspect in guide.text
    assert "overall" in guide.text.lower()
    assert client.get("/", follow_redirects=False).headers["location"] == "/instructions"


def test_access_log_filter_drops_query_strings():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/rate?token=SECRET", "1.1", 200),
        None,
    )
    assert DropQueryString().filter(record)
    assert "SECRET" not in record.getMessage() and "/rate" in record.getMessage()


def test_a_crash_is_a_json_500_without_details(store):
    from fastapi.testclient import TestClient

    from mv2_jax.studies.server import create_app

    def broken(token):
        raise RuntimeError("database at /secret/path is on fire")

    store.next_assignment = broken
    with TestClient(create_app(store, admin_token=None), raise_server_exceptions=False) as web:
        answer = web.get("/api/next", params={"token": "t"})
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error; the server log has the details"}
