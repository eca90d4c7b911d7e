"""A track at a glance (`graft track status`): each release in its source's order with its state, the
scores of the gate's primary metric, the decision on its candidate and why, and whether that candidate is the
champion now and how it came to be; and every decision made on one candidate (`graft registry show`).

Every function takes a Session and only reads (a release recorded without a state row gets one, as
`releases.status` says).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..terms import EvalSubject, GateDecision, ReleaseState
from . import releases, runs
from .approvals import approval_request
from .models import Candidate, EvalResult, Promotion, Release, Track
from .registry import public_id


class Metric(Protocol):
    """A metric as lm-eval names it (the gate's `MetricRef`); `str()` gives its name, `task/metric`."""

    @property
    def task(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def filter(self) -> str: ...


@dataclass(frozen=True)
class Scores:
    """The primary metric of each model scored in a release's run; None where that model was not scored.

    base: the bare release; transferred: the release plus the carried Δ, before fine-tuning (the track's
    first release has none); candidate: the release's candidate.
    """

    base: float | None
    transferred: float | None
    candidate: float | None


@dataclass(frozen=True)
class ReleaseRow:
    """One release of a track, as `graft track status` shows it (`--json` prints these fields as they are).

    release: its id (`release-3`); label: how people see it named (`release-3 (02-M2)`); ref: its branch,
    tag or folder (None for a repo release); revision: its full sha; state: its `ReleaseState`; detail: why
    it is in that state (None: nothing to say); attempts: its runs so far; retry_at: when a failed one may
    run again (ISO 8601, UTC; None: not waiting); candidate: the id of the newest candidate Algorithm 1
    made for it (None before one; backports are not counted); scores: that run's primary metric;
    decision: the decision on that candidate, its gate's (or the person's who answered its approval request, or
    who promoted it by hand before any gate did: the first decision that named it; `promote`, `reject`; None
    before one); decided_by: who made it (`gate`, or the user); reasons: all its reasons, in the gate's order;
    reason: the one that decided (`deciding_reason`); champion: whether the candidate is the champion of the
    track's channel now; reign: how it came to be, when it is (`promote by gate`, `rollback by alice`, ...);
    waiting: whether the candidate passed its gate's rules and waits for a person's approval (`graft approve`).
    """

    release: str
    label: str
    ref: str | None
    revision: str
    state: ReleaseState
    detail: str | None
    attempts: int
    retry_at: str | None
    candidate: str | None
    scores: Scores
    decision: GateDecision | None
    decided_by: str | None
    reasons: list[str]
    reason: str | None
    champion: bool
    reign: str | None
    waiting: bool

    @property
    def reign_by_another(self) -> str | None:
        """How the candidate came to be champion, when another decision than its own made it so (else None)."""
        return None if self.reign == f"{self.decision} by {self.decided_by}" else self.reign


@dataclass(frozen=True)
class TrackStatus:
    """A track at a glance: its name, its channel, the name of the metric its rows score (the gate's
    primary metric, `task/metric`), the channel's champion (a candidate id; None while there is none) and
    one row per release, in the source's order."""

    track: str
    channel: str
    metric: str
    champion: str | None
    releases: list[ReleaseRow]


def track_status(session: Session, *, track: Track, channel: str, primary: Metric) -> TrackStatus:
    """The status of `track`: its releases' states, scores of `primary`, decisions on `channel`'s gate."""
    holder = runs.champion(session, track=track, channel=channel)
    rows = [_row(session, release=r, primary=primary, champion=holder) for r in releases.in_order(session, track=track)]
    return TrackStatus(
        track=track.name,
        channel=channel,
        metric=str(primary),
        champion=None if holder is None else public_id(holder),
        releases=rows,
    )


def decisions_on(session: Session, *, candidate: Candidate) -> list[Promotion]:
    """Every decision that named `candidate` as the one to hold its channel (promote, reject, or a
    rollback to it), oldest first."""
    query = select(Promotion).where(Promotion.to_candidate_id == candidate.id)
    return list(session.scalars(query.order_by(Promotion.id)))


def deciding_reason(reasons: list[str]) -> str | None:
    """The reason that decided: the first rule that failed; else, all having passed, the last one checked (the
    comparison with the champion, or that there was none)."""
    return next((r for r in reasons if r.startswith("fail: ")), reasons[-1] if reasons else None)


def _row(session: Session, *, release: Release, primary: Metric, champion: Candidate | None) -> ReleaseRow:
    state = releases.status(session, release=release)
    made = runs.recycled_candidate(session, release=release)
    decisions = [] if made is None else decisions_on(session, candidate=made)
    first = decisions[0] if decisions else None
    reasons = [] if first is None else [str(r) for r in first.reasons]
    holds = made is not None and champion is not None and made.id == champion.id
    reign = runs.reign(session, track=release.track, channel=first.channel) if holds and first is not None else None
    return ReleaseRow(
        release=public_id(release),
        label=releases.label(release),
        ref=release.ref,
        revision=release.revision,
        state=state.state,
        detail=state.detail,
        attempts=state.attempts,
        retry_at=None if state.retry_at is None else state.retry_at.isoformat(),
        candidate=None if made is None else public_id(made),
        scores=_scores(session, release=release, candidate=made, primary=primary),
        decision=None if first is None else first.decision,
        decided_by=None if first is None else first.actor,
        reasons=reasons,
        reason=deciding_reason(reasons),
        champion=holds,
        reign=None if reign is None else f"{reign.decision} by {reign.actor}",
        waiting=made is not None and first is None and approval_request(session, candidate=made) is not None,
    )


def _scores(session: Session, *, release: Release, candidate: Candidate | None, primary: Metric) -> Scores:
    """`primary`'s newest value for the release's bare base and its base + Δ, and for `candidate`."""
    scored = and_(EvalResult.release_id == release.id, EvalResult.candidate_id.is_(None))
    if candidate is not None:
        scored = or_(scored, EvalResult.candidate_id == candidate.id)
    query = select(EvalResult).where(
        scored,
        EvalResult.task == primary.task,
        EvalResult.metric == primary.metric,
        EvalResult.filter == primary.filter,
    )
    found = {r.subject: r.value for r in session.scalars(query.order_by(EvalResult.id))}
    return Scores(
        base=found.get(EvalSubject.BASE),
        transferred=found.get(EvalSubject.TRANSFERRED),
        candidate=found.get(EvalSubject.CANDIDATE),
    )
