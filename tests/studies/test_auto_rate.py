"""The automated rater against a small fake of the study server's API (issue 20, item 5) in a
thread: it posts exactly the shapes judge's votes, on a gold pair "same", retries lost
connections (a retried vote answered 409 counts as done) and stops with clear errors."""

import argparse
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from scipy import ndimage

from mv2_jax.data.shapes import caption, render, sample_clip
from mv2_jax.media import read_video, write_video
from mv2_jax.studies.auto_rate import AutoRateError, add_parser, rater_address, run
from mv2_jax.studies.judges import CRITERIA, VOTES, ShapesJudge

TOKEN = "s3cret-token"


class FakeStudy:
    """One rater's assignments over `pairs` [(prompt, left mp4 bytes, right mp4 bytes)], with
    failures to inject: connections to drop, media answered 503."""

    def __init__(self, pairs, criteria=CRITERIA):
        self.criteria = list(criteria)
        self.media: dict[str, bytes] = {}
        self.assignments = {}
        for number, (prompt, left, right) in enumerate(pairs, start=11):
            urls = {}
            for side, data in (("left", left), ("right", right)):
                opaque = uuid.uuid4().hex
                self.media[opaque] = data
                urls[side] = {"url": f"/media/{opaque}"}
            self.assignments[number] = {"assignment_id": number, "prompt": prompt, **urls}
        self.votes: dict[int, dict] = {}
        self.vote_posts: list[int] = []  # assignment ids, one per POST that reached the server
        self.drop_next = 0  # GET /api/next connections to drop before answering
        self.drop_vote_answer: set[int] = set()  # votes stored, then the answer is lost
        self.busy_media = 0  # media requests answered 503 first
        self.lock = threading.Lock()

    def next(self) -> dict:
        total, done = len(self.assignments), len(self.votes)
        for number, assignment in self.assignments.items():
            if number not in self.votes:
                return {**assignment, "criteria": self.criteria, "done": done, "total": total}
        return {"finished": True, "done": done, "total": total}


def handler_for(study: FakeStudy):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def answer(self, status: int, payload=None, body: bytes | None = None):
            body = json.dumps(payload).encode() if body is None else body
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def drop(self):
            self.close_connection = True  # no answer at all: the client sees a reset

        def do_GET(self):
            parts = urlsplit(self.path)
            with study.lock:
                if parts.path == "/api/next":
                    if study.drop_next > 0:
                        study.drop_next -= 1
                        return self.drop()
                    if parse_qs(parts.query).get("token") != [TOKEN]:
                        return self.answer(401, {"error": "unknown or revoked token"})
                    return self.answer(200, study.next())
                if parts.path.startswith("/media/"):
                    if study.busy_media > 0:
                        study.busy_media -= 1
                        return self.answer(503, {"error": "restarting"})
                    data = study.media.get(parts.path.removeprefix("/media/"))
                    if data is None:
                        return self.answer(404, {"error": "unknown media id"})
                    return self.answer(200, body=data)
            self.answer(404, {"error": "no such page"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with study.lock:
                number = body.get("assignment_id")
                study.vote_posts.append(number)
                if body.get("token") != TOKEN:
                    return self.answer(401, {"error": "unknown or revoked token"})
                if number not in study.assignments:
                    return self.answer(404, {"error": "unknown assignment"})
                votes = body.get("votes", {})
                if sorted(votes) != sorted(study.criteria) or set(votes.values()) - set(VOTES):
                    return self.answer(400, {"error": "a vote per criterion"})
                if number in study.votes:
                    return self.answer(409, {"error": "already voted"})
                study.votes[number] = votes
                if number in study.drop_vote_answer:
                    study.drop_vote_answer.discard(number)
                    return self.drop()
            self.answer(200, {"ok": True})

    return Handler


@pytest.fixture(scope="module")
def pair_videos(tmp_path_factory):
    """Shapes-world mp4s for 3 pairs: clean vs heavily blurred, a gold pair (one video on both
    sides), frames shuffled vs clean."""
    folder = tmp_path_factory.mktemp("pairs")
    clips = [sample_clip(np.random.default_rng(seed), num_frames=8) for seed in (1, 2, 3)]
    frames = [render(clip, 64, np.arange(8)) for clip in clips]
    blurred = ndimage.gaussian_filter(frames[0], (0, 2.5, 2.5, 0))
    shuffled = frames[2][[3, 6, 0, 7, 2, 5, 1, 4]]

    def mp4(video, name):
        return write_video(video, folder / f"{name}.mp4").read_bytes()

    clean = [mp4(f, f"clean{i}") for i, f in enumerate(frames)]
    return [
        (caption(clips[0]), clean[0], mp4(blurred, "blurred")),
        (caption(clips[1]), clean[1], clean[1]),
        (caption(clips[2]), mp4(shuffled, "shuffled"), clean[2]),
    ]


@pytest.fixture
def server(pair_videos):
    study = FakeStudy(pair_videos)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(study))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    study.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield study
    httpd.shutdown()
    httpd.server_close()


def auto_rate(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["auto-rate", "--retry-wait", "0", "--timeout", "20", *argv]))


def expected_votes(study: FakeStudy, number: int, tmp_path) -> dict:
    """What the judge says about an assignment's videos, decoded as the rater decodes them."""
    assignment = study.assignments[number]
    videos = []
    for side in ("left", "right"):
        path = tmp_path / f"{number}-{side}.mp4"
        path.write_bytes(study.media[assignment[side]["url"].removeprefix("/media/")])
        videos.append(read_video(path)[0])
    return ShapesJudge().judge(*videos, assignment["prompt"], criteria=CRITERIA).votes


def test_posts_the_judges_votes_through_the_invite_url(server, tmp_path, capsys):
    log = tmp_path / "log" / "judgements.jsonl"
    invite = f"{server.url}/rate?token={TOKEN}"
    assert auto_rate("--url", invite, "--judge", "shapes", "--log", str(log)) == 0
    assert sorted(server.votes) == [11, 12, 13] and server.vote_posts == [11, 12, 13]
    for number in server.votes:
        assert server.votes[number] == expected_votes(server, number, tmp_path)
    assert server.votes[11]["visual"] == server.votes[11]["overall"] == "left"  # blurred right
    assert server.votes[12] == dict.fromkeys(CRITERIA, "same")  # the gold pair
    assert server.votes[13]["consistency"] == server.votes[13]["overall"] == "right"  # shuffled
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["assignment_id"] for r in records] == [11, 12, 13]
    assert records[0]["votes"] == server.votes[11] and records[0]["left"]["visual"] > 0.9
    out = capsys.readouterr().out
    assert "voted on 3 pairs (all done)" in out and "overall: left 1, same 1, right 1" in out
    # nothing left: a second run votes on nothing
    assert auto_rate("--url", server.url, "--token", TOKEN) == 0
    assert "voted on 0 pairs (all done)" in capsys.readouterr().out


def test_retries_lost_connections_and_counts_a_409_retry_as_done(server, capsys):
    server.drop_next, server.busy_media = 2, 1
    server.drop_vote_answer = {12}  # stored, but the answer never arrives: the retry gets 409
    assert auto_rate("--url", server.url, "--token", TOKEN, "--retries", "3") == 0
    assert sorted(server.votes) == [11, 12, 13]
    assert server.vote_posts == [11, 12, 12, 13]  # one retry, answered 409, not voted twice
    assert server.drop_next == server.busy_media == 0
    assert "voted on 3 pairs (all done)" in capsys.readouterr().out


def test_limit_stops_early(server, capsys):
    assert auto_rate("--url", server.url, "--token", TOKEN, "--limit", "2") == 0
    assert sorted(server.votes) == [11, 12]
    assert "voted on 2 pairs (2 of 3 done)" in capsys.readouterr().out


def test_unknown_token_is_a_clear_error(server, capsys):
    assert auto_rate("--url", f"{server.url}/rate?token=forged") == 1
    err = capsys.readouterr().err
    assert "HTTP 401 (unknown or revoked token)" in err
    assert "ask the study's owner for a new invite" in err
    assert not server.votes


def test_a_vote_someone_else_cast_first_is_an_error(server, capsys):
    server.votes[11] = dict.fromkeys(CRITERIA, "same")
    server.next = lambda: {**server.assignments[11], "criteria": CRITERIA, "done": 1, "total": 3}
    assert auto_rate("--url", server.url, "--token", TOKEN) == 1
    assert "assignment 11 was already voted (409)" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(capsys):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # a port nobody listens on once closed
    assert auto_rate("--url", f"http://127.0.0.1:{port}", "--token", TOKEN, "--retries", "1") == 1
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}/api/next after 2 tries" in err
    assert TOKEN not in err


def test_rater_address():
    assert rater_address("http://h:8000/rate?token=abc") == ("http://h:8000", "abc")
    assert rater_address("http://h:8000/", "abc") == ("http://h:8000", "abc")
    assert rater_address("https://h/studies/rate/?token=t", "t") == ("https://h/studies", "t")
    with pytest.raises(AutoRateError, match="differs from the token"):
        rater_address("http://h:8000/rate?token=abc", "xyz")
    with pytest.raises(AutoRateError, match="no token: pass --token"):
        rater_address("http://h:8000")
    with pytest.raises(AutoRateError, match="expected the server's address"):
        rater_address("h:8000/rate?token=abc")
