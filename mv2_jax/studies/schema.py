"""The study database: its tables (SQLAlchemy 2 declarative) and its versioned schema.

A study pairs arms' videos by (prompt, seed); each rater gets assignments (a pair, an order, a
random side for each video) and casts one vote per criterion on each. `schema_version` holds
the version; `migrate` brings an older database up to `SCHEMA_VERSION` step by step and refuses
one written by a newer mv2-jax.

    studies ─< arms          studies ─< pairs >─ videos (a, b)
    studies ─< raters ─< assignments >─ pairs;  assignments ─< votes (one per criterion)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    inspect,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    criteria: Mapped[str] = mapped_column(String(200))  # comma-separated, in page order
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class Arm(Base):
    __tablename__ = "arms"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    folder: Mapped[str] = mapped_column(Text)


class Video(Base):
    """A file the server may send, known to raters only by its random `opaque` id."""

    __tablename__ = "videos"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    opaque: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    arm: Mapped[str] = mapped_column(String(120))  # "<arm>~degraded" for a gold check's copy


class Pair(Base):
    """Two videos of one (prompt, seed). `gold`: None for a real pair, else the vote an
    attentive rater gives, relative to (a, b): "a", "same" or "b"; `gold_kind` is the check
    (gold.KINDS), which says the criteria it checks (gold.CHECKED)."""

    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    video_a_id: Mapped[int] = mapped_column(ForeignKey("videos.id"))
    video_b_id: Mapped[int] = mapped_column(ForeignKey("videos.id"))
    gold: Mapped[str | None] = mapped_column(String(8), nullable=True)
    gold_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # gold.KINDS


class Rater(Base):
    __tablename__ = "raters"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the token
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class Assignment(Base):
    """One pair shown to one rater at `position` in their queue; `a_on_left` hides which arm
    is where. `voted_at` is set in the same transaction as the votes, once."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("rater_id", "pair_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    a_on_left: Mapped[bool] = mapped_column(Boolean)
    voted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("assignment_id", "criterion"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    criterion: Mapped[str] = mapped_column(String(40))
    vote: Mapped[str] = mapped_column(String(8))  # "left" | "same" | "right", as shown
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


def _create_v1(connection: Connection) -> None:
    Base.metadata.create_all(connection)


# MIGRATIONS[v] takes a database at version v - 1 (0: empty) to version v.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _create_v1}


def migrate(connection: Connection) -> int:
    """Bring the database to `SCHEMA_VERSION` (creating it when empty); return the version it
    had. A database of a newer version, or one with study tables but no version, is refused."""
    tables = set(inspect(connection).get_table_names())
    if "schema_version" in tables:
        found = connection.execute(select(SchemaVersion.version)).scalars().all()
        version = max(found, default=0)
    elif tables & {t.name for t in Base.metadata.sorted_tables}:
        raise RuntimeError(
            "the database has study tables but no schema_version table: it was not made by "
            "mv2-jax; point --db at a new file or an empty database"
        )
    else:
        version = 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database is at schema version {version}, newer than this mv2-jax knows "
            f"({SCHEMA_VERSION}); upgrade mv2-jax to use it"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[step](connection)
        SchemaVersion.__table__.create(connection, checkfirst=True)
        connection.execute(SchemaVersion.__table__.delete())
        connection.execute(SchemaVersion.__table__.insert().values(version=step))
    return version
