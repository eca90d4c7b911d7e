"""Eval results in the registry: the scores of a candidate, of a release's bare base, or of a champion evaluated
again, each with its fingerprint and the blob of its per-sample results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..terms import EvalSubject
from .models import Candidate, EvalResult, Release


def release_scores(session: Session, *, candidate: Candidate, metric: str) -> list[EvalResult]:
    """One metric's results for every model scored in the candidate's run (candidate, base, transferred)."""
    query = select(EvalResult).where(EvalResult.release_id == candidate.release_id, EvalResult.metric == metric)
    return list(session.scalars(query.order_by(EvalResult.id)))


def eval_results(session: Session, *, candidate: Candidate) -> list[EvalResult]:
    """The eval results recorded for a candidate."""
    return list(session.scalars(select(EvalResult).where(EvalResult.candidate_id == candidate.id)))


def base_evaluation(session: Session, *, release: Release) -> list[EvalResult]:
    """The newest evaluation of a release's bare base: the rows that share its samples' blob (or, made before
    samples were kept, its newest rows of each task and metric)."""
    query = select(EvalResult).where(
        EvalResult.release_id == release.id, EvalResult.subject == EvalSubject.BASE, EvalResult.candidate_id.is_(None)
    )
    found = list(session.scalars(query.order_by(EvalResult.id.desc())))
    if not found:
        return []
    blob = found[0].samples_blob
    if blob is not None:
        return sorted((r for r in found if r.samples_blob == blob), key=lambda r: r.id)
    newest: dict[tuple[str, str, str], EvalResult] = {}
    for row in found:
        newest.setdefault((row.task, row.metric, row.filter), row)
    return sorted(newest.values(), key=lambda r: r.id)


@dataclass(frozen=True)
class Score:
    """One metric of one task, as an evaluation reports it."""

    task: str
    metric: str
    filter: str
    value: float
    stderr: float | None
    n: int | None
    harness_version: str
    task_version: str | None
    samples_blob: str | None = None
    fingerprint: dict[str, Any] | None = None
    setup_sha256: str | None = None
    model_sha256: str | None = None


def add_eval_results(
    session: Session,
    *,
    scores: Sequence[Score],
    subject: EvalSubject,
    candidate: Candidate | None = None,
    release: Release | None = None,
) -> list[EvalResult]:
    """Record the scores of one model: a candidate, or a release's bare base (`subject` says which)."""
    rows = [
        EvalResult(
            candidate_id=None if candidate is None else candidate.id,
            release_id=None if release is None else release.id,
            subject=subject,
            **vars(s),
        )
        for s in scores
    ]
    session.add_all(rows)
    session.flush()
    return rows


def record_scores(session: Session, *, candidate: Candidate, scores: Mapping[EvalSubject, Sequence[Score]]) -> None:
    for subject, records in scores.items():
        owner = candidate if subject is EvalSubject.CANDIDATE else None
        add_eval_results(session, scores=records, subject=subject, candidate=owner, release=candidate.release)
