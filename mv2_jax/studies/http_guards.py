"""The study server's defences, apart from its routes: a cap on request bodies, security headers
on every response, errors as JSON `{"error": ...}` with the right status (FastAPI's 422 turned
into 400), and an access-log filter that keeps invitation tokens out of the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mv2_jax.studies.store import StudyError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024  # a vote is ~200 bytes; anything near this is not a vote

# Self-only: no CDN, no inline script or style (the page passes data through data-* attributes
# and a JSON block), no framing. `media-src 'self'` covers /media; `blob:` is not needed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    # Tokens travel in the page's query string: never send it on to another site.
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
CACHEABLE_PREFIXES = ("/static/", "/media/")  # everything else (pages with tokens, API) no-store


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    """The one error shape of the API: `{"error": message}` with `status`."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, judged on the declared Content-Length
    and on the bytes actually received (a chunked or lying client is cut off at the limit).
    The body is read here, so the app sees it replayed; at 16 KiB buffering costs nothing."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: disconnect notices for streamed responses

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over {self.max_bytes} bytes; a vote is a small JSON object"
        response = error_response(413, message, headers={"connection": "close"})
        await response(scope, receive, send)


class SecurityHeaders:
    """Add SECURITY_HEADERS to every response, and `Cache-Control: no-store` to all but static
    files and media (pages and API answers carry or depend on secret tokens)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                if not cacheable and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _validation_message(error: RequestValidationError) -> str:
    """FastAPI's list of problems → one sentence: `query.token: Field required`."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()))
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else problem["msg"])
    return "; ".join(parts) or "malformed request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can produce becomes `{"error": ...}` with its status: StudyError
    (400/401/403/404/409 from the store), Starlette's 404/405, request validation as 400
    (FastAPI says 422; the API promises 400 for a malformed request), and a crash as 500."""

    @app.exception_handler(StudyError)
    async def study_error(_request: Request, error: StudyError) -> JSONResponse:
        return error_response(error.status, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404 and error.detail == "Not Found":
            message = f"not found: {request.url.path}"
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            message = f"method {request.method} not allowed on {request.url.path}; use {allowed}"
        else:
            message = str(error.detail)
        return error_response(error.status_code, message, headers=error.headers)

    @app.exception_handler(Exception)
    async def crash(_request: Request, _error: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets the API's error shape, no details.
        return error_response(500, "internal error; the server log has the details")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(error))


class DropQueryString(logging.Filter):
    """uvicorn's access log writes the path with its query string, which holds rater and admin
    tokens: log the path alone. Records are `(client, method, path, http_version, status)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def keep_tokens_out_of_logs() -> None:
    """Install DropQueryString on uvicorn's access logger (call after uvicorn configured it)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryString) for f in access.filters):
        access.addFilter(DropQueryString())
