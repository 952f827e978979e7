"""The study server under load (issue 20: ≥ 200 votes/s on SQLite on these 2 cores): `--raters`
simulated raters (threads, one keep-alive connection each) vote through the JSON API of a real
`python -m mv2_jax.studies serve` child process as fast as they can, GET /api/next then POST
/api/vote, until every assignment has its vote. Run twice per database: undisturbed, and with
the server killed (SIGKILL) `--kills` times at even fractions of the votes and restarted. Each
run then checks the store: every vote answered 200 is stored exactly once with its value.

votes/s = acknowledged votes / wall seconds (GETs included, restarts included in the kill
runs); latency = POST /api/vote → 200 (p50, p99).

    python benchmarks/study_load.py [--raters 32] [--items 50] [--kills 2] [--db sqlite postgresql]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import machine, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.studies.load import Server, free_port, make_study, run_raters, stored_votes


def one_run(kind: str, raters: int, items: int, kills: int, folder: Path, postgres=None) -> list:
    db = str(folder / "study.db") if kind == "sqlite" else postgres.create_database(f"k{kills}")
    tokens = make_study(folder, db, items, raters)
    server = Server(db, free_port(), folder / "server.log")
    server.start()
    total = raters * items
    try:
        kill_after = [total * (k + 1) // (kills + 1) for k in range(kills)]
        outcome, seconds, _ = run_raters(server, tokens, kill_after)
    finally:
        server.stop()
    stored = stored_votes(db)
    lost = sum(stored.get(a) != [v] for a, v in outcome.acknowledged.items())
    doubled = sum(len(v) > 1 for v in stored.values())
    latency = np.asarray(outcome.latencies) * 1000
    return [
        kind,
        kills,
        len(outcome.acknowledged),
        f"{len(outcome.acknowledged) / seconds:.0f}",
        f"{np.percentile(latency, 50):.1f}",
        f"{np.percentile(latency, 99):.1f}",
        outcome.errors,
        f"{lost} / {doubled}",
        len(stored) == total and not outcome.unexpected,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raters", type=int, default=32)
    parser.add_argument("--items", type=int, default=50, help="pairs each rater votes on")
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    rows, postgres = [], None
    try:
        for kind in args.db:
            if kind == "postgresql":
                from tests.studies.postgres import PostgresServer, postgres_bin

                postgres = PostgresServer(postgres_bin()).start()
            for kills in (0, args.kills):
                with tempfile.TemporaryDirectory() as folder:
                    row = one_run(kind, args.raters, args.items, kills, Path(folder), postgres)
                print("  ", row, file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        if postgres is not None:
            postgres.stop()
    print(machine())
    print(f"{args.raters} raters × {args.items} pairs, one uvicorn process\n")
    headers = ["database", "SIGKILLs", "votes (200)", "votes/s", "p50 ms", "p99 ms",
               "failed requests", "lost / doubled", "all stored once"]  # fmt: skip
    print(table(headers, rows))


if __name__ == "__main__":
    main()
