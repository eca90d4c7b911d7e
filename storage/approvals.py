"""A person's part in a track's gate: the candidates that passed the rules and wait for approval, and the
decisions people made on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..terms import ActorKind, EvalSubject
from .evals import Score, record_scores
from .models import ApprovalRequest, Candidate, Promotion


def request_approval(
    session: Session,
    *,
    candidate: Candidate,
    channel: str,
    scores: Mapping[EvalSubject, Sequence[Score]],
    reasons: Sequence[str],
    flow_run_id: str | None,
) -> ApprovalRequest:
    """Record the eval results the gate's rules passed on, and that `candidate` waits for a person's decision."""
    record_scores(session, candidate=candidate, scores=scores)
    row = ApprovalRequest(
        track_id=candidate.track_id,
        candidate_id=candidate.id,
        channel=channel,
        reasons=list(reasons),
        flow_run_id=flow_run_id,
    )
    session.add(row)
    session.flush()
    return row


def approval_request(session: Session, *, candidate: Candidate) -> ApprovalRequest | None:
    """The request for a person's decision on `candidate`, if its gate made one."""
    query = select(ApprovalRequest).where(ApprovalRequest.candidate_id == candidate.id)
    return session.scalars(query.order_by(ApprovalRequest.id).limit(1)).one_or_none()


def person_decision(session: Session, *, candidate: Candidate) -> Promotion | None:
    """The first decision a person recorded on `candidate` (approval, rejection or a hand promotion)."""
    query = select(Promotion).where(Promotion.to_candidate_id == candidate.id, Promotion.actor_kind == ActorKind.USER)
    return session.scalars(query.order_by(Promotion.id).limit(1)).one_or_none()
