"""The study store: every state change of a study — create, invite, revoke, next, vote — as one
transaction on a SQLAlchemy 2 database (SQLite in WAL mode by default, PostgreSQL or any other
URL for a team). Thread-safe: the server calls it from its worker threads.

A vote is written with its assignment's `voted_at` in one transaction, guarded by
`UPDATE … WHERE voted_at IS NULL` and a unique (assignment, criterion) key, so an
acknowledged vote is on disk (SQLite `synchronous=FULL`) and a repeated one is refused (409),
never stored twice. Tokens are stored as SHA-256 hashes; a rater's token is shown once.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import secrets
import threading
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mv2_jax.studies.criteria import DEFAULT_CRITERIA, VOTES, parse_criteria
from mv2_jax.studies.gold import gold_count, make_gold_checks
from mv2_jax.studies.schema import (
    Arm,
    Assignment,
    Pair,
    Rater,
    Study,
    Video,
    Vote,
    migrate,
    utc_now,
)


class StudyError(Exception):
    """A refused request; `status` is the HTTP status the server answers with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(StudyError):
    status = 400


class Unauthorized(StudyError):
    status = 401


class Forbidden(StudyError):
    status = 403


class NotFound(StudyError):
    status = 404


class AlreadyVoted(StudyError):
    status = 409


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def database_url(db: str) -> str:
    """`--db`: a SQLAlchemy URL, or a plain file path (→ SQLite there)."""
    return db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):  # WAL: readers never block the one writer
            cursor = connection.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


class StudyStore:
    def __init__(self, url: str):
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        with self.engine.begin() as connection:
            migrate(connection)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer; threads of this process queue here instead of in SQLite's
        # busy handler, which sleeps in steps of up to 100 ms (p99 latency of seconds).
        self._one_writer = threading.Lock() if self.url.startswith("sqlite") else nullcontext()

    def close(self) -> None:
        self.engine.dispose()

    # ---- studies -------------------------------------------------------------------------

    def create_study(
        self,
        name: str,
        arms: Mapping[str, Path],
        criteria: str | Sequence[str] = DEFAULT_CRITERIA,
        gold_rate: float = 0.0,
        media_dir: Path | None = None,
        seed: int = 0,
    ) -> dict:
        """Pair the arms' videos by (prompt, seed) — every two arms, every item — and add
        `gold_rate` attention checks (degraded copies written to `media_dir`). Arms that do
        not cover the same (prompt, seed) items are refused, the missing ones named."""
        from mv2_jax.studies.sidecar import read_arm

        criteria = parse_criteria(criteria)
        if len(arms) < 2:
            raise BadRequest("a study compares at least two arms: give --arm A=DIR --arm B=DIR")
        items = {arm: read_arm(folder) for arm, folder in arms.items()}
        _check_coverage(items)
        keys = sorted(next(iter(items.values())))
        count = gold_count(gold_rate, len(keys) * len(arms) * (len(arms) - 1) // 2)
        if count and media_dir is None:
            raise BadRequest("gold checks write degraded videos: give a media folder")
        with self._session.begin() as session:
            if session.scalar(select(Study.id).where(Study.name == name)) is not None:
                raise BadRequest(f"a study named {name!r} exists already; choose another name")
            study = Study(name=name, criteria=",".join(criteria), gold_rate=gold_rate)
            session.add(study)
            session.flush()
            videos: dict[Path, Video] = {}

            def video(path: Path, arm: str) -> Video:
                if path not in videos:
                    videos[path] = Video(
                        study_id=study.id, opaque=secrets.token_urlsafe(18), path=str(path), arm=arm
                    )
                    session.add(videos[path])
                return videos[path]

            for arm, folder in arms.items():
                session.add(Arm(study_id=study.id, name=arm, folder=str(Path(folder).resolve())))
            pairs = []
            for (prompt, item_seed), (arm_a, arm_b) in itertools.product(
                keys, itertools.combinations(list(arms), 2)
            ):
                a, b = items[arm_a][prompt, item_seed], items[arm_b][prompt, item_seed]
                a, b = video(a.video, arm_a), video(b.video, arm_b)
                pairs.append((prompt, item_seed, a, b, None, None))
            sources = [(p, s, arm, items[arm][p, s].video) for arm in arms for p, s in keys]
            for check in make_gold_checks(sources, count, Path(media_dir or "."), seed):
                a, b = video(check.a, check.arm), video(check.b, check.b_arm)
                pairs.append((check.prompt, check.seed, a, b, check.expected, check.kind))
            session.flush()
            for prompt, item_seed, a, b, gold, gold_kind in pairs:
                session.add(
                    Pair(
                        study_id=study.id,
                        prompt=prompt,
                        seed=item_seed,
                        video_a_id=a.id,
                        video_b_id=b.id,
                        gold=gold,
                        gold_kind=gold_kind,
                    )
                )
        return {"study": name, "arms": list(arms), "pairs": len(pairs) - count, "gold": count}

    def arms(self, study: str) -> list[str]:
        """The study's arm names, in the order `create` was given them."""
        with self._session() as session:
            from mv2_jax.studies.readout import arm_names

            return arm_names(session, self._study(session, study).id)

    def studies(self) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(Study.name).order_by(Study.id)))

    def _study(self, session: Session, name: str) -> Study:
        study = session.scalar(select(Study).where(Study.name == name))
        if study is None:
            known = ", ".join(self.studies()) or "none yet"
            raise NotFound(f"no study named {name!r} (studies: {known})")
        return study

    # ---- raters --------------------------------------------------------------------------

    def invite(self, study: str, rater: str, max_pairs: int | None = None) -> str:
        """A new secret token for `rater` (shown once; only its hash is stored). A first
        invite queues the study's pairs for the rater in a random order (with `max_pairs`,
        the pairs fewest raters have so far); inviting again replaces the token, re-admits
        a revoked rater and keeps the queue and the votes."""
        token = secrets.token_urlsafe(32)
        with self._session.begin() as session:
            study_row = self._study(session, study)
            row = session.scalar(
                select(Rater).where(Rater.study_id == study_row.id, Rater.name == rater)
            )
            if row is not None:
                row.token_hash, row.revoked = hash_token(token), False
                return token
            row = Rater(study_id=study_row.id, name=rater, token_hash=hash_token(token))
            session.add(row)
            session.flush()
            load = (
                select(Pair.id, func.count(Assignment.id))
                .outerjoin(Assignment, Assignment.pair_id == Pair.id)
                .where(Pair.study_id == study_row.id)
                .group_by(Pair.id)
            )
            rng = random.Random(secrets.randbits(64))
            counts = [(n, rng.random(), pair_id) for pair_id, n in session.execute(load)]
            chosen = [pair_id for _, _, pair_id in sorted(counts)][:max_pairs]
            rng.shuffle(chosen)
            for position, pair_id in enumerate(chosen):
                session.add(
                    Assignment(
                        rater_id=row.id,
                        pair_id=pair_id,
                        position=position,
                        a_on_left=rng.random() < 0.5,
                    )
                )
        return token

    def revoke(self, study: str, rater: str) -> None:
        with self._session.begin() as session:
            study_row = self._study(session, study)
            row = session.scalar(
                select(Rater).where(Rater.study_id == study_row.id, Rater.name == rater)
            )
            if row is None:
                raise NotFound(f"study {study!r} has no rater {rater!r}")
            row.revoked = True

    def _rater(self, session: Session, token: object) -> Rater:
        if not isinstance(token, str) or not token:
            raise Unauthorized("a rater token is needed: open the link from your invitation")
        row = session.scalar(select(Rater).where(Rater.token_hash == hash_token(token)))
        if row is None or row.revoked:
            raise Unauthorized("this rater token is unknown or was revoked; ask for a new link")
        return row

    # ---- rating --------------------------------------------------------------------------

    def next_assignment(self, token: str) -> dict:
        """The rater's first assignment without votes (the API's `/api/next` body)."""
        with self._session() as session:
            rater = self._rater(session, token)
            study = session.get(Study, rater.study_id)
            done, total = session.execute(
                select(func.count(Assignment.voted_at), func.count(Assignment.id)).where(
                    Assignment.rater_id == rater.id
                )
            ).one()
            assignment = session.scalar(
                select(Assignment)
                .where(Assignment.rater_id == rater.id, Assignment.voted_at.is_(None))
                .order_by(Assignment.position)
                .limit(1)
            )
            if assignment is None:
                return {"finished": True, "done": done, "total": total}
            pair = session.get(Pair, assignment.pair_id)
            a, b = session.get(Video, pair.video_a_id), session.get(Video, pair.video_b_id)
            left, right = (a, b) if assignment.a_on_left else (b, a)
            return {
                "assignment_id": assignment.id,
                "prompt": pair.prompt,
                "criteria": study.criteria.split(","),
                "left": {"url": f"/media/{left.opaque}"},
                "right": {"url": f"/media/{right.opaque}"},
                "done": done,
                "total": total,
            }

    def record_vote(self, token: str, assignment_id: object, votes: object) -> None:
        """Store one vote per criterion for the assignment, atomically and once."""
        if isinstance(assignment_id, bool) or not isinstance(assignment_id, int):
            raise BadRequest("assignment_id must be an integer")
        if not isinstance(votes, dict):
            raise BadRequest('votes must be an object {criterion: "left"|"same"|"right"}')
        with self._one_writer, self._session.begin() as session:
            rater = self._rater(session, token)
            assignment = session.get(Assignment, assignment_id)
            if assignment is None:
                raise NotFound(f"no assignment {assignment_id}")
            if assignment.rater_id != rater.id:
                raise Forbidden(f"assignment {assignment_id} belongs to another rater")
            criteria = session.get(Study, rater.study_id).criteria.split(",")
            _check_votes(votes, criteria)
            now = utc_now()
            claimed = session.execute(
                update(Assignment)
                .where(Assignment.id == assignment_id, Assignment.voted_at.is_(None))
                .values(voted_at=now)
            ).rowcount
            if claimed != 1:
                raise AlreadyVoted(f"assignment {assignment_id} has its votes already")
            session.add_all(
                Vote(assignment_id=assignment_id, criterion=c, vote=votes[c], created_at=now)
                for c in criteria
            )
            try:
                session.flush()
            except IntegrityError:
                raise AlreadyVoted(f"assignment {assignment_id} has its votes already") from None

    def media_path(self, opaque: str) -> Path | None:
        with self._session() as session:
            path = session.scalar(select(Video.path).where(Video.opaque == opaque))
        return None if path is None else Path(path)

    # ---- reading out ---------------------------------------------------------------------

    def export_rows(self, study: str) -> list[dict]:
        """One row per vote (the `studies export` JSONL row; see docs/studies.md)."""
        from mv2_jax.studies.readout import export_rows

        with self._session() as session:
            return export_rows(session, self._study(session, study))

    def admin_overview(self) -> list[dict]:
        from mv2_jax.studies.readout import overview

        with self._session() as session:
            return [overview(session, study) for study in session.scalars(select(Study))]


def _check_coverage(items: Mapping[str, Mapping]) -> None:
    every = set().union(*(set(found) for found in items.values()))
    problems = []
    for arm, found in items.items():
        missing = sorted(every - set(found))
        if missing:
            shown = "; ".join(f"{p!r} seed {s}" for p, s in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            problems.append(f"arm {arm} lacks {len(missing)}: {shown}{more}")
    if problems:
        raise BadRequest(
            "the arms do not cover the same (prompt, seed) items — "
            + " | ".join(problems)
            + "; generate the missing videos (sample.py batch resumes) or drop them elsewhere"
        )
    if not every:
        raise BadRequest("the arms hold no videos with sidecars; run `sample.py batch` first")


def _check_votes(votes: Mapping, criteria: Sequence[str]) -> None:
    missing = [c for c in criteria if c not in votes]
    unknown = [c for c in votes if c not in criteria]
    if missing or unknown:
        parts = [f"missing criteria {missing}" if missing else "",
                 f"unknown criteria {unknown}" if unknown else ""]  # fmt: skip
        raise BadRequest(f"{'; '.join(p for p in parts if p)}; this study asks for {criteria}")
    bad = {c: v for c, v in votes.items() if v not in VOTES}
    if bad:
        raise BadRequest(f"votes must be one of {list(VOTES)}, got {bad}")
