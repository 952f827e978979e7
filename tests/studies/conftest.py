"""Arms for study tests: small mp4 videos with the sidecars `sample.py batch` writes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from mv2_jax.media import write_video

if os.environ.get("CI"):
    # CI installs the [studies] extra (and httpx): a missing package fails these tests
    # instead of letting their importorskip lines skip them.
    import fastapi  # noqa: F401
    import httpx  # noqa: F401
    import psycopg  # noqa: F401
    import sqlalchemy  # noqa: F401

PROMPTS = ("a red circle moving right", "a blue square moving up", "a green triangle")


def write_arm(folder: Path, items, shade: int, frames: int = 8, size: int = 32) -> Path:
    """One mp4 + sidecar per (prompt, seed): a bright square on a background of `shade`,
    moving one pixel a frame (so every arm and item differs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (prompt, seed) in enumerate(items):
        video = np.full((frames, size, size, 3), shade, np.uint8)
        for f in range(frames):
            x = (f + 3 * index + seed) % (size - 8)
            video[f, 10:18, x : x + 8] = 255
        stem = f"item{index:03d}-s{seed}"
        write_video(video, folder / f"{stem}.mp4")
        sidecar = {"prompt": prompt, "seed": seed, "negative_prompt": None, "video": f"{stem}.mp4"}
        (folder / f"{stem}.json").write_text(json.dumps(sidecar))
    return folder


def write_shapes_arm(folder: Path, clips, blur: bool, seeds=None) -> Path:
    """Shapes-world clips rendered at 64² × 8 frames (blurred as gold checks blur, if asked),
    each with its caption as the prompt and seed 0 (or `seeds[i]`)."""
    from mv2_jax.data.shapes import caption, render
    from mv2_jax.studies.gold import blur_frames
    from mv2_jax.studies.sidecar import write_sidecar

    folder.mkdir(parents=True, exist_ok=True)
    for index, clip in enumerate(clips):
        pixels = (np.clip(render(clip, 64, np.arange(8)), 0, 1) * 255).round().astype(np.uint8)
        video = write_video(blur_frames(pixels) if blur else pixels, folder / f"{index}.mp4")
        write_sidecar(video, caption(clip), 0 if seeds is None else seeds[index])
    return folder


@pytest.fixture
def arms(tmp_path):
    """Two arms over the same 3 prompts × 2 seeds."""
    items = [(p, s) for p in PROMPTS for s in (0, 1)]
    return {"A": write_arm(tmp_path / "A", items, 40), "B": write_arm(tmp_path / "B", items, 90)}


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/studies/postgres.py). Skipped where
    the Debian binaries are missing, except under CI (`.ci/run` installs them): there it fails."""
    from tests.studies.postgres import PostgresServer, postgres_bin

    pytest.importorskip("psycopg")
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL binaries not found: apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh study database: an SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "study.db")
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def server_store(tmp_path, arms):
    """A store with the server tests' study s1 (server_fixtures.open_store), closed after."""
    from tests.studies.server_fixtures import open_store

    with open_store(tmp_path, arms) as store:
        yield store


@pytest.fixture
def client(server_store):
    """A TestClient on the study app over `server_store`, admin token server_fixtures.ADMIN."""
    from tests.studies.server_fixtures import open_client

    with open_client(server_store) as client:
        yield client
