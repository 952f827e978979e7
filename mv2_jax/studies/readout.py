"""Reading a study's votes out of the store: the export rows (one per vote, with the sides as
the rater saw them) and the admin overview (progress and gold-check accuracy per rater)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from mv2_jax.studies.criteria import VOTES
from mv2_jax.studies.gold import CHECKED
from mv2_jax.studies.schema import Arm, Assignment, Pair, Rater, Study, Video, Vote


def expected_vote(pair: Pair, a_on_left: bool, criterion: str) -> str | None:
    """The vote a gold pair expects on `criterion`, as the rater saw the sides: "left",
    "same" or "right"; "any" where its check has no right answer (gold.CHECKED); None for a
    real pair."""
    if pair.gold is None:
        return None
    checked = CHECKED.get(pair.gold_kind)
    if checked is not None and criterion not in checked:
        return "any"
    if pair.gold == "same":
        return "same"
    return "left" if (pair.gold == "a") == a_on_left else "right"


def export_rows(session: Session, study: Study) -> list[dict]:
    video_a, video_b = aliased(Video), aliased(Video)
    query = (
        select(Vote, Assignment, Pair, Rater, video_a, video_b)
        .join(Assignment, Vote.assignment_id == Assignment.id)
        .join(Pair, Assignment.pair_id == Pair.id)
        .join(Rater, Assignment.rater_id == Rater.id)
        .join(video_a, Pair.video_a_id == video_a.id)
        .join(video_b, Pair.video_b_id == video_b.id)
        .where(Pair.study_id == study.id)
        .order_by(Vote.created_at, Vote.id)
    )
    rows = []
    for vote, assignment, pair, rater, a, b in session.execute(query):
        left, right = (a, b) if assignment.a_on_left else (b, a)
        rows.append(
            {
                "study": study.name,
                "pair_id": pair.id,
                "prompt": pair.prompt,
                "seed": pair.seed,
                "arm_left": left.arm,
                "arm_right": right.arm,
                "video_left": left.path,
                "video_right": right.path,
                "rater": rater.name,
                "criterion": vote.criterion,
                "vote": vote.vote,
                "gold": expected_vote(pair, assignment.a_on_left, vote.criterion),
                "created_at": vote.created_at.isoformat(),
            }
        )
    return rows


def arm_names(session: Session, study_id: int) -> list[str]:
    """The study's arm names, in the order `create` was given them."""
    query = select(Arm.name).where(Arm.study_id == study_id).order_by(Arm.id)
    return list(session.scalars(query))


def overview(session: Session, study: Study) -> dict:
    """Progress per rater (done / total assignments), gold checks right / voted, revoked."""
    raters = []
    votes = 0
    for rater in session.scalars(select(Rater).where(Rater.study_id == study.id)):
        assignments = session.execute(
            select(Assignment, Pair)
            .join(Pair, Assignment.pair_id == Pair.id)
            .where(Assignment.rater_id == rater.id)
        ).all()
        done = sum(a.voted_at is not None for a, _ in assignments)
        gold_correct = gold_total = 0
        gold_of = {a.id: (p, a.a_on_left) for a, p in assignments if p.gold is not None}
        for vote in session.scalars(
            select(Vote).join(Assignment).where(Assignment.rater_id == rater.id)
        ):
            votes += 1
            if vote.assignment_id not in gold_of:
                continue
            expected = expected_vote(*gold_of[vote.assignment_id], vote.criterion)
            if expected in VOTES:
                gold_total += 1
                gold_correct += vote.vote == expected
        raters.append(
            {
                "rater": rater.name,
                "done": done,
                "total": len(assignments),
                "gold_correct": gold_correct,
                "gold_total": gold_total,
                "revoked": rater.revoked,
            }
        )
    return {
        "study": study.name,
        "criteria": study.criteria.split(","),
        "arms": arm_names(session, study.id),
        "raters": raters,
        "votes": votes,
    }
