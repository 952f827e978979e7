"""The study web application: the rating page, its JSON API, the videos and the admin page.

`create_app(store, admin_token=...)` builds the FastAPI app around a StudyStore; `serve(...)`
runs it under uvicorn (127.0.0.1 unless told otherwise). The API, which the page, the tests and
automated raters share (docs/studies.md):

    GET  /api/next?token=T    → {assignment_id, prompt, criteria, left: {url, fps}, right: {url,
                                 fps}, done, total} or {finished: true, done, total}
    POST /api/vote            {token, assignment_id, votes: {criterion: "left"|"same"|"right"}}
                              → {ok: true}; 409 for a second vote on an assignment
    GET  /media/<opaque id>   the video (HTTP Range, so the browser can seek)
    GET  /api/admin?token=A   progress, gold accuracy and the live G/S/B table (JSON)

Errors are `{"error": ...}` with 400/401/403/404/405/409/413. The admin routes answer 404 when
the server runs without an admin token and 401 to a missing or wrong one.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import mimetypes
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import av
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mv2_jax.studies.admin_table import live_table
from mv2_jax.studies.criteria import CRITERIA
from mv2_jax.studies.http_guards import (
    MAX_BODY_BYTES,
    BodyLimit,
    SecurityHeaders,
    error_response,
    install_error_handlers,
    keep_tokens_out_of_logs,
)
from mv2_jax.studies.store import StudyError, StudyStore

# uvicorn sets this logger up to print, so our start-up notes appear beside its own.
log = logging.getLogger("uvicorn.error")

PACKAGE_DIR = Path(__file__).parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
# The store's opaque ids are URL-safe tokens; anything else (a path, `..`) is refused unread.
MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # used with fullmatch
# The admin page marks raters below it; the report excludes them (report.report's default).
GOLD_THRESHOLD = 0.8
# Where a rater's page and the admin page say the token is missing or unknown, in words.
PAGE_ERRORS = {
    400: "This page needs the invitation link you were sent (it ends in ?token=…).",
    401: "This invitation link is not valid, or it has been withdrawn. Ask the study's "
    "organiser for a new one.",
    404: "There is nothing here.",
}


class VoteBody(BaseModel):
    """The body of POST /api/vote; strict: no extra keys, no "3" for 3, no true for 1."""

    model_config = ConfigDict(extra="forbid", strict=True)
    token: str = Field(min_length=1, max_length=256)
    assignment_id: int = Field(ge=0, lt=2**63)  # what a database integer holds
    votes: dict[str, Literal["left", "same", "right"]] = Field(min_length=1)


def _vote_error(error: ValidationError) -> str:
    """Pydantic's problems with a vote body → one sentence a client can act on."""
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(p) for p in problem["loc"]) or "body"
        if problem["type"] == "json_invalid":
            return "the body is not valid JSON; send {token, assignment_id, votes}"
        if problem["type"] in ("model_type", "model_attributes_type"):
            return "the body must be a JSON object {token, assignment_id, votes}"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


@lru_cache(maxsize=4096)
def _probe_fps(path: str, _mtime_ns: int) -> float | None:
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return float(rate) if rate else None
    except (av.error.FFmpegError, IndexError, OSError):
        return None


def video_fps(path: Path) -> float | None:
    """Frames per second of a video file (None where it cannot be read): the page steps and
    synchronises by frames. Cached per file version, so each video is opened once."""
    try:
        return _probe_fps(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


def _admin_token_matches(expected: str, given: str | None) -> bool:
    # compare_digest: the time taken does not reveal how many leading characters were right.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def create_app(
    store: StudyStore, *, admin_token: str | None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The study web app over `store`. `admin_token=None` turns the admin pages off (404)."""
    app = FastAPI(
        title="mv2-jax side-by-side study", docs_url=None, redoc_url=None, openapi_url=None
    )
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last = outermost: also on 413 answers

    def page_error(request: Request, status: int, message: str | None = None) -> HTMLResponse:
        text = message or PAGE_ERRORS.get(status, "Something went wrong.")
        context = {"status": status, "message": text}
        return templates.TemplateResponse(request, "message.html", context, status_code=status)

    known_media: dict[str, Path] = {}  # opaque id → file; ids never change once created

    def media_path(media_id: str) -> Path | None:
        """The store's file for `media_id`, remembered: a browser asks for each video many
        times (one Range request per seek). Misses are not remembered."""
        path = known_media.get(media_id)
        if path is None and MEDIA_ID.fullmatch(media_id):
            path = store.media_path(media_id)
            if path is not None and len(known_media) < 100_000:
                known_media[media_id] = path
        return path

    def with_fps(assignment: dict[str, Any]) -> dict[str, Any]:
        """Add each side's frame rate (the page's frame step and sync tolerance)."""
        answer = dict(assignment)
        for side in ("left", "right"):
            if isinstance(answer.get(side), dict):
                media = dict(answer[side])
                path = media_path(str(media.get("url", "")).rsplit("/", 1)[-1])
                media["fps"] = video_fps(path) if path is not None else None
                answer[side] = media
        return answer

    def admin_problem(token: str | None) -> tuple[int, str] | None:
        if admin_token is None:
            return 404, "admin pages are off: start the server with --admin-token"
        if not _admin_token_matches(admin_token, token):
            return 401, "admin token missing or wrong; open /admin?token=<the admin token>"
        return None

    def admin_overview() -> list[dict[str, Any]]:
        studies = store.admin_overview()
        for study in studies:
            study["table"] = live_table(store.export_rows(study["study"]), study.get("arms"))
        return studies

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/instructions", status_code=303)

    @app.get("/api/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/instructions", response_class=HTMLResponse)
    def instructions(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "instructions.html", {"criteria": CRITERIA})

    @app.get("/rate", response_class=HTMLResponse)
    def rate(request: Request, token: str | None = None) -> HTMLResponse:
        if not token:
            return page_error(request, 400)
        try:  # check the link now, so that a bad one gets a clear page, not a broken one
            store.next_assignment(token)
        except StudyError as error:
            return page_error(request, error.status, PAGE_ERRORS.get(error.status, str(error)))
        return templates.TemplateResponse(request, "rate.html", {"criteria": CRITERIA})

    @app.get("/api/next")
    def next_assignment(token: str) -> JSONResponse:
        assignment = store.next_assignment(token)
        return JSONResponse(assignment if assignment.get("finished") else with_fps(assignment))

    @app.post("/api/vote")
    async def vote(request: Request) -> JSONResponse:
        try:
            body = VoteBody.model_validate_json(await request.body())
        except ValidationError as error:
            return error_response(400, _vote_error(error))
        await run_in_threadpool(store.record_vote, body.token, body.assignment_id, body.votes)
        return JSONResponse({"ok": True})

    @app.api_route("/media/{media_id}", methods=["GET", "HEAD"])
    def media(media_id: str) -> FileResponse:
        path = media_path(media_id)
        if path is None or not Path(path).is_file():
            raise StarletteHTTPException(404, f"no video with id {media_id[:64]!r}")
        media_type = mimetypes.guess_type(Path(path).name)[0] or "application/octet-stream"
        # No filename: the response must not reveal which arm or file a side is.
        return FileResponse(
            path, media_type=media_type, headers={"cache-control": "private, max-age=3600"}
        )

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, token: str | None = None) -> HTMLResponse:
        problem = admin_problem(token)
        if problem is not None:
            return page_error(request, *problem)
        context = {"studies": admin_overview(), "gold_threshold": GOLD_THRESHOLD}
        return templates.TemplateResponse(request, "admin.html", context)

    @app.get("/api/admin")
    def admin_api(request: Request, token: str | None = None) -> JSONResponse:
        bearer = request.headers.get("authorization", "")
        if token is None and bearer.lower().startswith("bearer "):
            token = bearer[7:].strip()
        problem = admin_problem(token)
        if problem is not None:
            return error_response(*problem)
        return JSONResponse({"studies": admin_overview()})

    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    url: str, host: str = "127.0.0.1", port: int = 8000, admin_token: str | None = None
) -> None:
    """Serve the studies in the store at `url` (an SQLAlchemy URL) until interrupted. The
    access log records paths without their query strings, which hold the tokens."""
    import uvicorn

    app = create_app(StudyStore(url), admin_token=admin_token)
    config = uvicorn.Config(
        app, host=host, port=port, proxy_headers=False, server_header=False, log_level="info"
    )
    keep_tokens_out_of_logs()  # after uvicorn.Config, which sets up its loggers
    if not _is_loopback(host):
        log.warning(
            "serving on %s: plain HTTP, so tokens cross the network readable; put a TLS "
            "reverse proxy in front for anything beyond a trusted network",
            host,
        )
    if admin_token is None:
        log.info("no admin token: /admin is off (pass --admin-token to see progress)")
    uvicorn.Server(config).run()
