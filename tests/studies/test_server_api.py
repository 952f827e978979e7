"""The study server's JSON API through FastAPI's TestClient, on a real StudyStore (SQLite):
the whole rating session, every refused input with its status (forged and revoked tokens,
another rater's assignment, malformed bodies, oversized bodies) and media with HTTP Range and
no way to reach a file by its path."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")

from mv2_jax.studies.http_guards import BodyLimit
from tests.studies.server_fixtures import (
    STUDY,
    vote_body,
)


@pytest.fixture
def store(server_store):
    return server_store


def test_whole_session_next_vote_until_finished(client, store):
    token = store.invite("s1", "ann")
    seen, done = [], []
    for _ in range(10):
        answer = client.get("/api/next", params={"token": token})
        assert answer.status_code == 200
        body = answer.json()
        if body.get("finished"):
            break
        assert set(body) == {
            "assignment_id",
            "prompt",
            "criteria",
            "left",
            "right",
            "done",
            "total",
        }
        assert body["criteria"] == ["visual", "consistency"]
        assert body["total"] == 6  # 3 prompts x 2 seeds, two arms: one pair per item
        for side in ("left", "right"):
            url = body[side]["url"]
            assert url.startswith("/media/") and ".mp4" not in url and "/" not in url[7:]
            assert body[side]["fps"] == pytest.approx(8.0)
        # Asking again before voting gives the same pair (a reload resumes).
        assert client.get("/api/next", params={"token": token}).json() == body
        seen.append(body["assignment_id"])
        done.append(body["done"])
        reply = client.post("/api/vote", json=vote_body(token, body["assignment_id"]))
        assert reply.status_code == 200 and reply.json() == {"ok": True}
    assert body == {"finished": True, "done": 6, "total": 6}
    assert done == [0, 1, 2, 3, 4, 5] and len(set(seen)) == 6
    rows = store.export_rows(STUDY)
    assert len(rows) == 12  # 6 assignments x 2 criteria
    assert sorted(r["vote"] for r in rows) == ["left"] * 6 + ["same"] * 6


def test_second_vote_is_409_and_stores_one_row_per_criterion(client, store):
    token = store.invite("s1", "ann")
    assignment = client.get("/api/next", params={"token": token}).json()["assignment_id"]
    assert client.post("/api/vote", json=vote_body(token, assignment)).status_code == 200
    changed = {"visual": "right", "consistency": "right"}
    again = client.post("/api/vote", json=vote_body(token, assignment, changed))
    assert again.status_code == 409 and "error" in again.json()
    rows = store.export_rows(STUDY)
    assert len(rows) == 2 and {r["vote"] for r in rows} == {"left", "same"}


def test_forged_and_revoked_tokens_are_401(client, store):
    token = store.invite("s1", "ann")
    assignment = client.get("/api/next", params={"token": token}).json()["assignment_id"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (forged, "x", ""):
        answer = client.get("/api/next", params={"token": bad})
        assert answer.status_code == 401, bad
        assert "error" in answer.json()
        assert client.post("/api/vote", json=vote_body(bad or "?", assignment)).status_code == 401
    store.revoke("s1", "ann")
    assert client.get("/api/next", params={"token": token}).status_code == 401
    assert client.post("/api/vote", json=vote_body(token, assignment)).status_code == 401
    assert store.export_rows(STUDY) == []


def test_another_raters_assignment_is_403_and_unknown_is_404(client, store):
    ann, bob = store.invite("s1", "ann"), store.invite("s1", "bob")
    anns = client.get("/api/next", params={"token": ann}).json()["assignment_id"]
    answer = client.post("/api/vote", json=vote_body(bob, anns))
    assert answer.status_code == 403 and "another rater" in answer.json()["error"]
    assert client.post("/api/vote", json=vote_body(bob, 999_999)).status_code == 404
    assert store.export_rows(STUDY) == []
    # Ann's pair is still hers to vote on.
    assert client.post("/api/vote", json=vote_body(ann, anns)).status_code == 200


BAD_BODIES = {
    "not JSON": b"token=abc&votes=left",
    "truncated JSON": b'{"token": "t", "assignment_id": 1, "votes": {',
    "a list": b"[1, 2, 3]",
    "a string": b'"vote"',
    "no votes": b'{"token": "TOKEN", "assignment_id": ID}',
    "empty votes": b'{"token": "TOKEN", "assignment_id": ID, "votes": {}}',
    "missing criterion": b'{"token": "TOKEN", "assignment_id": ID, "votes": {"visual": "left"}}',
    "extra criterion": b'{"token": "TOKEN", "assignment_id": ID, "votes": {"visual": "left", '
    b'"consistency": "same", "overall": "left"}}',
    "unknown criterion": b'{"token": "TOKEN", "assignment_id": ID, "votes": {"visual": "left", '
    b'"smell": "same"}}',
    "unknown vote value": b'{"token": "TOKEN", "assignment_id": ID, "votes": {"visual": "left", '
    b'"consistency": "better"}}',
    "vote as a number": b'{"token": "TOKEN", "assignment_id": ID, "votes": {"visual": 1, '
    b'"consistency": "same"}}',
    "id as a string": b'{"token": "TOKEN", "assignment_id": "ID", "votes": {"visual": "left", '
    b'"consistency": "same"}}',
    "id as a bool": b'{"token": "TOKEN", "assignment_id": true, "votes": {"visual": "left", '
    b'"consistency": "same"}}',
    "id too large": b'{"token": "TOKEN", "assignment_id": 100000000000000000000000, '
    b'"votes": {"visual": "left", "consistency": "same"}}',
    "token as a number": b'{"token": 5, "assignment_id": ID, "votes": {"visual": "left", '
    b'"consistency": "same"}}',
    "an extra key": b'{"token": "TOKEN", "assignment_id": ID, "votes": {"visual": "left", '
    b'"consistency": "same"}, "admin": true}',
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_malformed_vote_bodies_are_400_and_store_nothing(client, store, case):
    token = store.invite("s1", "ann")
    assignment = client.get("/api/next", params={"token": token}).json()["assignment_id"]
    body = (
        BAD_BODIES[case].replace(b"TOKEN", token.encode()).replace(b"ID", str(assignment).encode())
    )
    answer = client.post("/api/vote", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert isinstance(answer.json()["error"], str) and answer.json()["error"]
    assert store.export_rows(STUDY) == []
    # The refused body did not use the assignment up: a good vote still goes through.
    assert client.post("/api/vote", json=vote_body(token, assignment)).status_code == 200


def test_bad_query_and_methods_are_json_400_404_405(client):
    missing = client.get("/api/next")
    assert missing.status_code == 400 and "token" in missing.json()["error"]
    wrong_method = client.get("/api/vote")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.json()["error"]
    assert client.get("/no/such/page").status_code == 404
    assert "error" in client.get("/no/such/page").json()
    for hidden in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(hidden).status_code == 404


def test_oversized_bodies_are_413_by_header_and_by_stream(client, store):
    token = store.invite("s1", "ann")
    big = {"token": token, "assignment_id": 1, "votes": {"visual": "left" * 5000}}
    declared = client.post("/api/vote", json=big)
    assert declared.status_code == 413 and "bytes" in declared.json()["error"]

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        for _ in range(40):
            yield b" " * 1024

    streamed = client.post(
        "/api/vote", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert store.export_rows(STUDY) == []


def test_body_limit_counts_bytes_when_content_length_lies():
    reached = []

    async def app(scope, receive, send):
        reached.append(await receive())

    async def receive_parts(parts):
        for index, part in enumerate(parts):
            yield {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}

    async def run(parts, declared):
        sent = []
        stream = receive_parts(parts)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/vote",
            "query_string": b"",
            "headers": [(b"content-length", declared)],
        }

        async def send(message):
            sent.append(message)

        await BodyLimit(app, max_bytes=100)(scope, stream.__anext__, send)
        return sent

    lying = asyncio.run(run([b"x" * 60, b"x" * 60], b"10"))
    assert lying[0]["status"] == 413 and reached == []
    honest = asyncio.run(run([b"x" * 40, b"x" * 60], b"100"))
    assert honest == [] and reached[0]["body"] == b"x" * 100 and not reached[0]["more_body"]


def test_media_serves_known_ids_with_range_and_refuses_paths(client, store):
    token = store.invite("s1", "ann")
    url = client.get("/api/next", params={"token": token}).json()["left"]["url"]
    data = store.media_path(url.rsplit("/", 1)[1]).read_bytes()
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert "content-disposition" not in whole.headers  # no file name given away
    part = client.get(url, headers={"range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    tail = client.get(url, headers={"range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    beyond = client.get(url, headers={"range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416
    assert client.head(url).status_code == 200

    secret = store.media_path(url.rsplit("/", 1)[1])
    app = client.app
    for raw in (
        "/media/unknown-id",
        "/media/../../etc/passwd",
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/%2E%2E%2Fstudy.db",
        "/media/..",
        f"/media/{secret}",  # an absolute path, as is
        f"/media/{str(secret).replace('/', '%2F')}",  # and encoded
        "/media//etc/passwd",
        "/media/",
        "/media/" + url.rsplit("/", 1)[1] + "%0A",  # a known id with a newline
    ):
        status, body = raw_get(app, raw)
        assert status == 404, raw
        assert b'"error"' in body
        assert data[:64] not in body


def raw_get(app, raw_path: str) -> tuple[int, bytes]:
    """GET `raw_path` exactly as written (`..` and all; HTTP clients normalise dot segments
    away), straight into the ASGI app, as uvicorn would pass it: status and body."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body
