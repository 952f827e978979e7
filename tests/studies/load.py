"""Simulated raters against a real study server (`python -m mv2_jax.studies serve` in a child
process): each rater votes through the JSON API as fast as it can, while the server may be
killed with SIGKILL and restarted. Every answer is recorded, so the caller can check that each
vote acknowledged with 200 is stored exactly once. Used by tests/studies/test_server_kill.py
and benchmarks/study_load.py."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mv2_jax.studies.store import StudyStore
from tests.studies.conftest import write_arm

ADMIN = "load-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_study(folder: Path, db: str, items: int, raters: int) -> list[str]:
    """Two arms of `items` tiny videos, a study pairing them, `raters` invited: their tokens."""
    pairs = [(f"prompt {i}", 0) for i in range(items)]
    arms = {
        "A": write_arm(folder / "A", pairs, 40, frames=4, size=16),
        "B": write_arm(folder / "B", pairs, 90, frames=4, size=16),
    }
    store = StudyStore(db)
    try:
        store.create_study("load", arms)
        return [store.invite("load", f"rater{i:02d}") for i in range(raters)]
    finally:
        store.close()


class Server:
    """`python -m mv2_jax.studies serve` on a fixed port; `kill()` is SIGKILL."""

    def __init__(self, db: str, port: int, log: Path):
        self.db, self.port, self.log = db, port, log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        command = [sys.executable, "-m", "mv2_jax.studies", "serve", "--db", self.db,
                   "--port", str(self.port), "--admin-token", ADMIN]  # fmt: skip
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the server did not listen on {self.port} in {timeout} s")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Outcome:
    acknowledged: dict[int, str] = field(default_factory=dict)  # assignment → vote (200)
    conflicts: int = 0  # 409: the vote had landed before a lost answer
    errors: int = 0  # connection refused / reset while the server was down
    latencies: list[float] = field(default_factory=list)  # seconds, POST /api/vote → 200
    unexpected: list[str] = field(default_factory=list)


class Rater:
    def __init__(self, token: str, port: int, outcome: Outcome, lock: threading.Lock, seed: int):
        self.token, self.port, self.outcome, self.lock = token, port, outcome, lock
        self.rng = random.Random(seed)
        self.connection: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = None
            raise

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                status, item = self._request("GET", f"/api/next?token={self.token}")
                if status != 200:
                    raise RuntimeError(f"GET /api/next → {status} {item}")
                if item.get("finished"):
                    return
                vote = self.rng.choice(["left", "same", "right"])
                body = {"token": self.token, "assignment_id": item["assignment_id"],
                        "votes": {c: vote for c in item["criteria"]}}  # fmt: skip
                started = time.perf_counter()
                status, answer = self._request("POST", "/api/vote", body)
                elapsed = time.perf_counter() - started
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.outcome.errors += 1
                time.sleep(0.02)
                continue
            with self.lock:
                if status == 200:
                    self.outcome.acknowledged[item["assignment_id"]] = vote
                    self.outcome.latencies.append(elapsed)
                elif status == 409:
                    self.outcome.conflicts += 1
                else:
                    self.outcome.unexpected.append(f"{status} {answer}")


def run_raters(server: Server, tokens: list[str], kill_after: list[int] = ()) -> tuple:
    """All raters to the end of their queues; the server SIGKILLed (and restarted at once)
    when the acknowledged votes first reach each count of `kill_after`.
    → (Outcome, wall seconds, the acknowledged count at each kill)."""
    outcome, lock, stop = Outcome(), threading.Lock(), threading.Event()
    raters = [Rater(t, server.port, outcome, lock, seed=i) for i, t in enumerate(tokens)]
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in raters]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    killed_at = []
    for count in kill_after:
        while len(outcome.acknowledged) < count and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        killed_at.append(len(outcome.acknowledged))
        server.kill()
        server.start()
    for thread in threads:
        thread.join(timeout=600)
    stop.set()
    return outcome, time.perf_counter() - started, killed_at


def stored_votes(db: str) -> dict[int, list[str]]:
    """assignment → its stored votes (read through the export rows' pair/rater identity)."""
    from sqlalchemy import select

    from mv2_jax.studies.schema import Vote

    store = StudyStore(db)
    try:
        with store.engine.connect() as connection:
            rows = connection.execute(select(Vote.assignment_id, Vote.vote)).all()
    finally:
        store.close()
    votes: dict[int, list[str]] = {}
    for assignment, vote in rows:
        votes.setdefault(assignment, []).append(vote)
    return votes
