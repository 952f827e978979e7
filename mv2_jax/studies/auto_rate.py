"""`python -m mv2_jax.studies auto-rate`: an automated rater that votes through a study server's
HTTP API exactly as a person's rating page does — GET /api/next, download both /media/ videos,
judge them (`mv2_jax.studies.judges`), POST /api/vote — until the rater's assignments are done
or `--limit` is reached. It is how the human-feedback loop runs in tests and on the shipped
models without people, and the labeller of preference data.

Standard library HTTP (urllib), so it needs nothing the package does not already have.
Connection errors and 502/503/504 (a server restarting) are retried with exponential back-off;
a vote whose answer was lost and whose retry is answered 409 ("already voted") was stored by the
first try, so it counts as done. The token is a secret: it is never printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from mv2_jax.media import read_video
from mv2_jax.studies.judges import JUDGES, VOTES, make_judge

_ASSIGNMENT_KEYS = ("assignment_id", "prompt", "criteria", "left", "right")
TRANSIENT_STATUSES = (502, 503, 504)  # a proxy or server (re)starting: worth another try
_CONNECTION_ERRORS = (URLError, ConnectionError, http.client.HTTPException, TimeoutError)
_STATUS_HINTS = {
    400: "the server refused the request as malformed or incomplete",
    401: "the server does not know this token, or it was revoked: ask the study's owner for "
    "a new invite (`python -m mv2_jax.studies invite`)",
    403: "the assignment belongs to another rater",
    404: "not found on the server",
    413: "the request body is larger than the server accepts",
}


class AutoRateError(Exception):
    """A problem that stops the automated rater; the message names it and the fix."""


def rater_address(url: str, token: str | None = None) -> tuple[str, str]:
    """(base URL, token) from `--url` — the server's address `http://HOST:PORT[/prefix]` or a
    rater's invite URL `http://HOST:PORT/rate?token=T` — and `--token` (optional with an invite
    URL; when both are given they must agree)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AutoRateError(
            f"--url {url!r}: expected the server's address http://HOST:PORT or a rater's "
            "invite URL http://HOST:PORT/rate?token=T"
        )
    in_url = parse_qs(parts.query).get("token", [None])[0]
    if token and in_url and token != in_url:
        raise AutoRateError("--token differs from the token in --url's invite link: give one")
    token = token or in_url
    if not token:
        raise AutoRateError("no token: pass --token T, or the rater's invite URL (…/rate?token=T)")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/rate")
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), token


class StudyClient:
    """The rating API of one rater at `base_url`: `next_assignment`, `download`, `vote`.
    Each request is tried up to `retries` + 1 times on connection errors and 502/503/504,
    waiting `retry_wait` seconds, doubling each time (at most 10 s)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retries: int = 5,
        retry_wait: float = 0.5,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url, self.token = base_url.rstrip("/"), token
        self.retries, self.retry_wait, self.timeout, self.sleep = (
            retries,
            retry_wait,
            timeout,
            sleep,
        )

    def next_assignment(self) -> dict:
        """The server's next assignment for this rater, or `{"finished": True, …}`."""
        url = f"{self.base_url}/api/next?token={self.token}"
        status, body, _ = self._request(Request(url), f"{self.base_url}/api/next")
        return _json(status, body, "asking for the next assignment")

    def download(self, media_url: str, path: Path) -> Path:
        """Save the video at `media_url` (as the API gives it, "/media/<id>") to `path`."""
        url = urljoin(self.base_url + "/", media_url)
        status, body, _ = self._request(Request(url), url)
        if status != 200:
            _json(status, body, f"downloading {media_url}")
            raise AutoRateError(f"downloading {media_url}: HTTP {status}")
        path.write_bytes(body)
        return path

    def vote(self, assignment_id: int, votes: dict[str, str]) -> bool:
        """Post `votes` for an assignment; False when a retry found it already stored (the
        first try got through but its answer was lost), True otherwise."""
        url = f"{self.base_url}/api/vote"
        payload = {"token": self.token, "assignment_id": assignment_id, "votes": votes}
        request = Request(
            url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        status, body, tries = self._request(request, url)
        if status == 409 and tries > 1:
            return False
        if status == 409:
            raise AutoRateError(
                f"assignment {assignment_id} was already voted (409) before this client voted "
                "it: is another client rating with the same token?"
            )
        _json(status, body, f"voting on assignment {assignment_id}")
        return True

    def _request(self, request: Request, shown: str) -> tuple[int, bytes, int]:
        """(status, body, tries used). `shown` names the URL in errors (without the token)."""
        for attempt in range(self.retries + 1):
            try:
                with urlopen(request, timeout=self.timeout) as response:
                    return response.status, response.read(), attempt + 1
            except HTTPError as e:
                body = e.read()
                if e.code not in TRANSIENT_STATUSES or attempt == self.retries:
                    return e.code, body, attempt + 1
                problem = f"HTTP {e.code}"
            except _CONNECTION_ERRORS as e:
                problem = str(getattr(e, "reason", None) or e) or type(e).__name__
                if attempt == self.retries:
                    raise AutoRateError(
                        f"cannot reach {shown} after {attempt + 1} tries ({problem}): is the "
                        "server running (`python -m mv2_jax.studies serve`) at that address?"
                    ) from e
            self.sleep(min(10.0, self.retry_wait * 2**attempt))
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _json(status: int, body: bytes, doing: str) -> dict:
    """The JSON of a 2xx answer; any other status raises AutoRateError with the server's
    `{"error": …}` message and what it means."""
    try:
        data = json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if 200 <= status < 300 and isinstance(data, dict):
        return data
    if 200 <= status < 300:
        raise AutoRateError(f"{doing}: the server answered {status} without a JSON object")
    message = data.get("error") if isinstance(data, dict) else None
    message = message or body[:200].decode("utf-8", "replace").strip() or "no message"
    hint = _STATUS_HINTS.get(status, "the server could not handle the request")
    raise AutoRateError(f"{doing}: HTTP {status} ({message}): {hint}")


def auto_rate(client: StudyClient, judge, *, limit: int | None = None, log=None) -> dict:
    """Vote on the rater's assignments until none is left or `limit` are voted; returns
    `{"voted", "done", "total", "finished", "votes": {criterion: {vote: count}}}`. `log`, an
    open text file, gets one JSON line per judgement (prompt, votes, both videos' scores)."""
    tally: dict[str, Counter] = {}
    voted: set[int] = set()
    assignment = client.next_assignment()
    remaining = max(0, int(assignment.get("total", 0)) - int(assignment.get("done", 0)))
    total = remaining if limit is None else min(limit, remaining)
    with (
        tempfile.TemporaryDirectory(prefix="mv2-auto-rate-") as folder,
        tqdm(total=total, desc=f"auto-rate ({judge.name})", unit="pair") as bar,
    ):
        while not assignment.get("finished") and (limit is None or len(voted) < limit):
            number = _check_assignment(assignment)
            if number in voted:
                raise AutoRateError(
                    f"the server handed out assignment {number} again after it was voted"
                )
            judgement = _judge(client, judge, assignment, Path(folder))
            client.vote(number, judgement.votes)
            voted.add(number)
            for criterion, vote in judgement.votes.items():
                tally.setdefault(criterion, Counter())[vote] += 1
            if log is not None:
                record = {"assignment_id": number, "prompt": assignment["prompt"]}
                log.write(json.dumps({**record, **judgement.as_dict()}) + "\n")
                log.flush()
            study = f"study {int(assignment.get('done', 0)) + 1}/{assignment.get('total')}"
            bar.set_postfix_str(study, refresh=False)
            bar.update(1)
            assignment = client.next_assignment()
    return {
        "voted": len(voted),
        "done": assignment.get("done"),
        "total": assignment.get("total"),
        "finished": bool(assignment.get("finished")),
        "votes": {c: dict(counts) for c, counts in tally.items()},
    }


def _check_assignment(assignment: dict) -> int:
    """The assignment's id, once its answer has every field the rater needs."""
    missing = [key for key in _ASSIGNMENT_KEYS if key not in assignment]
    missing += [
        f"{side}.url"
        for side in ("left", "right")
        if side in assignment and "url" not in (assignment[side] or {})
    ]
    if missing:
        raise AutoRateError(
            f"the server's assignment lacks {', '.join(missing)}: is --url a study server of "
            "mv2_jax (`python -m mv2_jax.studies serve`)?"
        )
    return int(assignment["assignment_id"])


def _judge(client: StudyClient, judge, assignment: dict, folder: Path):
    """Download and decode both videos of `assignment` and judge them on its criteria."""
    number = assignment["assignment_id"]
    videos = []
    for side in ("left", "right"):
        path = client.download(assignment[side]["url"], folder / f"{side}.video")
        try:
            videos.append(read_video(path)[0])
        except (ValueError, FileNotFoundError) as e:
            raise AutoRateError(f"assignment {number}, {side} video: {e}") from e
    try:
        return judge.judge(*videos, assignment["prompt"], criteria=assignment["criteria"])
    except ValueError as e:
        raise AutoRateError(f"assignment {number} ({assignment['prompt']!r}): {e}") from e


# ------------------------------------------------------------------------------ command


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `auto-rate` on an argparse `subparsers` object; `run(args)` executes it."""
    parser = subparsers.add_parser(
        "auto-rate",
        help="vote on a rater's assignments with an automated judge, through the HTTP API",
        description="Vote on a rater's assignments as the rating page does (GET /api/next, "
        "both /media/ videos, POST /api/vote), each pair judged from its pixels by --judge; "
        "one JSON line per judgement goes to --log.",
    )
    parser.add_argument(
        "--url",
        required=True,
        help="the server, http://HOST:PORT, or a rater's invite URL http://HOST:PORT/rate?token=T",
    )
    parser.add_argument(
        "--token", metavar="T", help="the rater's token (optional with an invite URL)"
    )
    parser.add_argument("--judge", default="shapes", choices=sorted(JUDGES), help="who votes")
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N", help="vote on at most this many pairs"
    )
    parser.add_argument(
        "--retries",
        type=_count,
        default=5,
        metavar="N",
        help="tries after the first on connection errors",
    )
    parser.add_argument(
        "--retry-wait",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="seconds before the first retry (doubles)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=60.0, metavar="SECONDS", help="seconds per request"
    )
    parser.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="append each judgement (votes and scores) to this JSONL file",
    )
    return parser


def _positive_int(text: str) -> int:
    return _count(text, least=1)


def _count(text: str, least: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number ≥ {least}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, a number ≥ 0")
    return value


def run(args: argparse.Namespace) -> int:
    """Run `auto-rate`; 0 on success, 1 with the problem on stderr."""
    try:
        base_url, token = rater_address(args.url, args.token)
        client = StudyClient(
            base_url, token, retries=args.retries, retry_wait=args.retry_wait, timeout=args.timeout
        )
        judge = make_judge(args.judge)
        if args.log is None:
            summary = auto_rate(client, judge, limit=args.limit)
        else:
            args.log.parent.mkdir(parents=True, exist_ok=True)
            with args.log.open("a", encoding="utf-8") as log:
                summary = auto_rate(client, judge, limit=args.limit, log=log)
    except AutoRateError as e:
        print(f"auto-rate: error: {e}", file=sys.stderr)
        return 1
    state = "all done" if summary["finished"] else f"{summary['done']} of {summary['total']} done"
    print(f"auto-rate: voted on {summary['voted']} pairs ({state})")
    for criterion, counts in summary["votes"].items():
        print(f"  {criterion}: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in VOTES))
    return 0


if __name__ == "__main__":  # until the studies command line registers it
    _parser = argparse.ArgumentParser(prog="python -m mv2_jax.studies.auto_rate")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    sys.exit(run(_parser.parse_args()))
