"""`python -m mv2_jax.studies` (installed: `mv2-study`): run a side-by-side study.

    create   --db study.db --name i2v-steps --arm A=runs/arm30 --arm B=runs/arm10 [--gold 0.1]
    invite   --db study.db --name i2v-steps --rater ann     → http://127.0.0.1:8000/rate?token=…
    revoke   --db study.db --name i2v-steps --rater ann
    serve    --db study.db [--host 127.0.0.1] [--port 8000] [--admin-token T]
    auto-rate --url http://127.0.0.1:8000/rate?token=… --judge shapes
    label    --arm runs/samples --judge shapes --out pairs.jsonl   (no study: a judge's pairs)
    export   --db study.db --name i2v-steps --out votes.jsonl
    report   --db study.db --name i2v-steps [--out DIR]

`--db` is a file path (SQLite) or any SQLAlchemy URL (`postgresql+psycopg://user@host/db`).
Errors are one line on stderr with exit status 2 (bad input) or 1 (refused by the store).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

from mv2_jax.studies.criteria import CRITERIA, DEFAULT_CRITERIA, parse_criteria

DB_HELP = "the study database: a file path (SQLite) or a SQLAlchemy URL"


def _arm(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: write an arm as NAME=FOLDER, e.g. A=runs/a")
    if not Path(folder).is_dir():
        raise argparse.ArgumentTypeError(f"{folder}: no such folder (the arm {name}'s videos)")
    return name, Path(folder)


def _criteria(text: str) -> tuple[str, ...]:
    try:
        return parse_criteria(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text}: the gold rate is in [0, 1), e.g. 0.1")
    return value


def build_parser(prog: str = "python -m mv2_jax.studies") -> argparse.ArgumentParser:
    from mv2_jax.studies import auto_rate, label

    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, study: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--db", required=True, help=DB_HELP)
        if study:
            sub.add_argument("--name", required=True, help="the study's name")
        return sub

    create = command("create", "pair the arms' videos by (prompt, seed) into a new study")
    create.add_argument(
        "--arm",
        action="append",
        type=_arm,
        required=True,
        metavar="NAME=DIR",
        help="an arm: a folder of videos with JSON sidecars (sample.py batch); two or more",
    )
    create.add_argument(
        "--criteria",
        type=_criteria,
        default=DEFAULT_CRITERIA,
        help="comma-separated, from: "
        + ", ".join(CRITERIA)
        + " (default: overall, the paper's single vote)",
    )
    create.add_argument(
        "--gold",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="attention checks per real pair (same video both sides, or a "
        "shuffled / blurred copy), e.g. 0.1",
    )
    create.add_argument(
        "--media",
        type=Path,
        default=None,
        help="where gold checks' degraded videos go (default: "
        "studies-media/NAME next to an SQLite file, else ./studies-media/NAME)",
    )
    create.add_argument("--seed", type=int, default=0, help="picks the gold checks")

    invite = command("invite", "print a rater's link with a new secret token")
    invite.add_argument("--rater", required=True, help="the rater's id (a name or an alias)")
    invite.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="where the server is reached (default %(default)s)",
    )
    invite.add_argument(
        "--max-pairs",
        type=int,
        default=None,
        help="queue at most this many pairs (those fewest raters have)",
    )

    revoke = command("revoke", "withdraw a rater's token (their votes stay)")
    revoke.add_argument("--rater", required=True)

    serve = command("serve", "run the rating web app", study=False)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default %(default)s: this machine only)",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("MV2_STUDY_ADMIN_TOKEN"),
        help="the /admin page's token (default: $MV2_STUDY_ADMIN_TOKEN, else a "
        "new one printed at start)",
    )

    export = command("export", "write one JSON line per vote")
    export.add_argument("--out", type=Path, required=True, help="votes.jsonl")

    report = command("report", "G/S/B, (G+S)/(B+S) with intervals, agreement: md + json + png")
    report.add_argument("--out", type=Path, default=None, help="default: NAME-report/")
    report.add_argument(
        "--gold-threshold",
        type=float,
        default=0.8,
        help="raters below this gold-check accuracy are excluded",
    )

    auto_rate.add_parser(commands)
    label.add_parser(commands)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m mv2_jax.studies") -> int:
    from mv2_jax.extras import require_extra

    require_extra("studies", prog)
    args = build_parser(prog).parse_args(argv)
    if args.command in ("auto-rate", "label"):  # no database: the HTTP API, or files
        from mv2_jax.studies import auto_rate, label

        return {"auto-rate": auto_rate, "label": label}[args.command].run(args)
    from mv2_jax.studies.store import StudyError, StudyStore

    try:
        store = StudyStore(args.db)
    except Exception as e:  # a bad URL, an unreachable server, a newer schema
        print(f"error: cannot open the study database {args.db}: {e}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](store, args)
    except (StudyError, ValueError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    finally:
        store.close()


def installed_main() -> int:
    """The installed `mv2-study` command."""
    return main(prog="mv2-study")


def _create(store, args) -> int:
    arms = dict(args.arm)
    if len(arms) != len(args.arm):
        raise ValueError("two arms share a name; give each --arm a different NAME")
    media = args.media or _default_media(store.url, args.name)
    summary = store.create_study(args.name, arms, args.criteria, args.gold, media, args.seed)
    gold = f" + {summary['gold']} gold checks" if summary["gold"] else ""
    print(f"study {args.name}: {summary['pairs']} pairs of {', '.join(arms)}{gold}")
    return 0


def _default_media(url: str, name: str) -> Path:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///")).parent / "studies-media" / name
    return Path("studies-media") / name


def _invite(store, args) -> int:
    token = store.invite(args.name, args.rater, max_pairs=args.max_pairs)
    print(f"{args.url.rstrip('/')}/rate?token={token}")
    return 0


def _revoke(store, args) -> int:
    store.revoke(args.name, args.rater)
    print(f"revoked {args.rater} in {args.name}")
    return 0


def _serve(store, args) -> int:
    from mv2_jax.studies.server import serve

    admin = args.admin_token or secrets.token_urlsafe(24)
    if not args.admin_token:
        print(f"admin page: http://{args.host}:{args.port}/admin?token={admin}", file=sys.stderr)
    store.close()
    serve(args.db, host=args.host, port=args.port, admin_token=admin)
    return 0


def _export(store, args) -> int:
    rows = store.export_rows(args.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    with open(partial, "w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(partial, args.out)
    print(f"{args.out}: {len(rows)} votes")
    return 0


def _report(store, args) -> int:
    from mv2_jax.studies.report import write_report

    out = args.out or Path(f"{args.name}-report")
    rows = store.export_rows(args.name)
    write_report(rows, out, arms=store.arms(args.name), gold_threshold=args.gold_threshold)
    print(f"{out}: report.md, report.json, report.png ({len(rows)} votes)")
    return 0


COMMANDS = {
    "create": _create,
    "invite": _invite,
    "revoke": _revoke,
    "serve": _serve,
    "export": _export,
    "report": _report,
}
