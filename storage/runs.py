"""What a recycle run records, as named registry operations: the Δ it carries over, its candidate and
fine-tune run, its eval results, and the gate's decision; and the champion of a track's channel.

Every function takes a Session and only adds and flushes; the caller's `session_scope()` commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import ChampionChangedError, ReleaseOrderError
from ..terms import (
    ActorKind,
    ArtifactKind,
    CandidateKind,
    CarryRule,
    EvalSubject,
    GateDecision,
    RecycleMode,
)
from . import evals, releases
from .models import Candidate, Diff, EvalResult, FinetuneRun, Promotion, Release, Track, TrackSpecVersion
from .registry import ancestors, by_id, public_id


@dataclass(frozen=True)
class Carry:
    """The Δ a release's run starts from (None: plain fine-tuning), and why that one."""

    diff: Diff | None
    reason: str


def carry(session: Session, *, release: Release, mode: RecycleMode, rule: CarryRule, channel: str) -> Carry:
    """The Δ a run of `release` carries over, by the track's mode and carry rule:

    - the rule picks whose Δ: `previous`, the release before this one in the track's order (Algorithm 1,
      whether or not its candidate was promoted); `champion`, the candidate promoted on `channel` now (the
      previous release's, while there is none);
    - the mode picks which: `iterative`, that candidate's own Δ (Δ^iter); `source`, the first Δ of its
      lineage (the track's first plain fine-tune's, or one imported); `none`, nothing.

    The track's first release carries nothing (Algorithm 1, line 4), or in `source` mode a Δ imported for
    the track (`graft registry import`), if there is one.

    Raises:
        ReleaseOrderError: the release before this one is not done yet: this run must wait for it.
    """
    if mode is RecycleMode.NONE:
        return Carry(None, "none: the track's recycle mode is none (plain fine-tuning)")
    before = releases.check_order(session, release=release)
    holder, why = None, "the release before this one in the track's order"
    if rule is CarryRule.CHAMPION:
        holder = champion(session, track=release.track, channel=channel)
        why = f"the champion of {channel}" if holder else f"no champion on {channel} yet: the release before this one"
    if holder is None and before is not None:
        holder = recycled_candidate(session, release=before)
    if holder is None:
        imported = _imported(session, track=release.track) if mode is RecycleMode.SOURCE else None
        if imported is None:
            return Carry(None, "none: the track's first release is fine-tuned from its base (Algorithm 1)")
        return Carry(imported, f"{public_id(imported)}, the Δ imported for the track (source mode)")
    delta = _delta_of(session, candidate=holder)
    if delta is None:
        raise ReleaseOrderError(
            f"candidate-{holder.id} of {releases.label(holder.release)} has no registered Δ yet; its run stopped "
            "before registering it: retry that release (`graft track retry`).",
            release=releases.label(holder.release),
        )
    if mode is RecycleMode.SOURCE:
        root = ([delta, *ancestors(session, diff=delta)])[-1]
        return Carry(root, f"{public_id(root)}, the first Δ of the lineage of candidate-{holder.id} ({why})")
    return Carry(
        delta, f"{public_id(delta)}, the Δ of candidate-{holder.id} of {releases.label(holder.release)} ({why})"
    )


def recycled_delta(session: Session, *, release: Release) -> Diff | None:
    """The Δ registered from the candidate Algorithm 1 made for `release` (None before it is registered)."""
    holder = recycled_candidate(session, release=release)
    return None if holder is None else _delta_of(session, candidate=holder)


def _delta_of(session: Session, *, candidate: Candidate) -> Diff | None:
    """The Δ registered from `candidate` (M* − M), if it is registered yet."""
    return session.scalars(select(Diff).where(Diff.candidate_id == candidate.id).order_by(Diff.id)).first()


def recycled_candidate(session: Session, *, release: Release) -> Candidate | None:
    """The newest candidate the release's runs of Algorithm 1 made (not a backport), if any."""
    query = select(Candidate).where(Candidate.release_id == release.id, Candidate.kind == CandidateKind.RECYCLE)
    return session.scalars(query.order_by(Candidate.id.desc()).limit(1)).one_or_none()


def _imported(session: Session, *, track: Track) -> Diff | None:
    """The newest Δ imported for the track (made by no candidate, following no other Δ)."""
    query = select(Diff).where(Diff.track_id == track.id, Diff.candidate_id.is_(None), Diff.parent_id.is_(None))
    return session.scalars(query.order_by(Diff.id.desc()).limit(1)).one_or_none()


def get_candidate(session: Session, *, candidate_id: int) -> Candidate:
    """A candidate by id.

    Raises:
        NotFoundError: no such candidate.
    """
    return cast(Candidate, by_id(session, ArtifactKind.CANDIDATE, candidate_id))


@dataclass(frozen=True)
class FinetuneRecord:
    """A completed fine-tune run, as it is recorded."""

    recipe: dict[str, Any]
    steps: int
    device: str
    processes: int
    tokens: int
    tokens_per_second: float
    final_loss: float | None
    loss_curve_blob: str | None
    started_at: datetime
    finished_at: datetime
    data_sha256: str | None = None


def record_candidate(
    session: Session,
    *,
    release: Release,
    mode: RecycleMode | None,
    alpha: float,
    model_uri: str,
    source_diff: Diff | None,
    finetune: FinetuneRecord | None,
    carry_reason: str | None = None,
    kind: CandidateKind = CandidateKind.RECYCLE,
    spec: TrackSpecVersion | None = None,
    start_choice: dict[str, Any] | None = None,
) -> Candidate:
    """Record the candidate made for `release` at `model_uri`, with the fine-tune run that made it, the
    Δ it started from (and why that one: `carry_reason`, and for an `auto` track `start_choice`) and the track's
    spec version it was made with; once: recording it again (a resumed run) returns the first row."""
    existing = session.scalars(
        select(Candidate)
        .where(Candidate.release_id == release.id, Candidate.model_uri == model_uri)
        .order_by(Candidate.id)
        .limit(1)
    ).one_or_none()
    if existing is not None:
        return existing
    run = None if finetune is None else FinetuneRun(track_id=release.track_id, release_id=release.id, **vars(finetune))
    if run is not None:
        session.add(run)
        session.flush()
    row = Candidate(
        track_id=release.track_id,
        release_id=release.id,
        mode=mode,
        alpha=alpha,
        model_uri=model_uri,
        kind=kind,
        carry_reason=carry_reason,
        source_diff_id=None if source_diff is None else source_diff.id,
        finetune_run_id=None if run is None else run.id,
        spec_id=None if spec is None else spec.id,
        start_choice=start_choice,
    )
    session.add(row)
    session.flush()
    return row


def release_decision(session: Session, *, release: Release) -> Promotion | None:
    """The gate's newest decision on the candidate Algorithm 1 made for `release` (None before one)."""
    query = (
        select(Promotion)
        .join(Candidate, Promotion.to_candidate_id == Candidate.id)
        .where(Candidate.release_id == release.id, Candidate.kind == CandidateKind.RECYCLE)
        .order_by(Promotion.id.desc())
        .limit(1)
    )
    return session.scalars(query).one_or_none()


def candidate_for(session: Session, *, track: Track, ref: str) -> Candidate | None:
    """The newest candidate Algorithm 1 made for the track's release published as `ref` (a branch, tag or
    folder); backports are not counted."""
    query = (
        select(Candidate)
        .join(Release, Candidate.release_id == Release.id)
        .where(Candidate.track_id == track.id, Release.ref == ref, Candidate.kind == CandidateKind.RECYCLE)
        .order_by(Candidate.id.desc())
        .limit(1)
    )
    return session.scalars(query).one_or_none()


def add_promotion(
    session: Session,
    *,
    track: Track,
    channel: str,
    decision: GateDecision,
    to_candidate: Candidate | None,
    reasons: list[str],
    actor_kind: ActorKind,
    actor: str,
) -> Promotion:
    """Record a decision (promote, reject, rollback) as a new row, under the channel's lock; the champion is the
    newest promoted or rolled-back-to candidate of the channel."""
    current = locked_champion(session, track=track, channel=channel)
    row = Promotion(
        track_id=track.id,
        channel=channel,
        decision=decision,
        from_candidate_id=current,
        to_candidate_id=None if to_candidate is None else to_candidate.id,
        reasons=reasons,
        actor_kind=actor_kind,
        actor=actor,
    )
    session.add(row)
    session.flush()
    return row


def locked_champion(session: Session, *, track: Track, channel: str) -> int | None:
    """Serialise the decisions on `track`'s channel until the session's transaction ends, and return the id of
    its champion as the lock holder sees it (None: none), the one the decision before it left: PostgreSQL locks
    the track's row (SELECT ... FOR UPDATE, and a statement after it sees what the holder committed); a SQLite
    transaction here begins IMMEDIATE, holding the database's write lock already."""
    session.execute(select(Track.id).where(Track.id == track.id).with_for_update())
    current = champion(session, track=track, channel=channel)
    return None if current is None else current.id


def decision_for(session: Session, *, candidate: Candidate) -> Promotion | None:
    """The gate's decision on `candidate`, if it was made."""
    query = select(Promotion).where(Promotion.to_candidate_id == candidate.id, Promotion.actor_kind == ActorKind.GATE)
    return session.scalars(query.order_by(Promotion.id).limit(1)).one_or_none()


@dataclass(frozen=True)
class GateInputs:
    """What the gate needs from the registry: its decision when it was made already (a resumed run), and
    the champion the decision is (or was) measured against, with that champion's eval results."""

    decided: Promotion | None
    champion: Candidate | None
    champion_scores: list[EvalResult]


def gate_inputs(session: Session, *, candidate: Candidate, channel: str) -> GateInputs:
    """The gate's inputs for `candidate` on `channel`."""
    decided = decision_for(session, candidate=candidate)
    if decided is None:
        holder = champion(session, track=candidate.track, channel=channel)
    elif decided.from_candidate_id is None:
        holder = None
    else:
        holder = get_candidate(session, candidate_id=decided.from_candidate_id)
    scores = [] if holder is None else evals.eval_results(session, candidate=holder)
    return GateInputs(decided=decided, champion=holder, champion_scores=scores)


def record_gate_decision(
    session: Session,
    *,
    candidate: Candidate,
    channel: str,
    scores: Mapping[EvalSubject, Sequence[evals.Score]],
    promote: bool,
    reasons: Sequence[str],
    against: int | None,
) -> Promotion:
    """Record the eval results a gate decision was made on, and the decision itself (actor: the gate), measured
    against the champion `against` (a candidate id; None: there was none).

    Raises:
        ChampionChangedError: the channel's champion is no longer `against` (a decision recorded meanwhile);
            nothing is recorded, and the run that measured it is run again.
    """
    track = candidate.track
    current = locked_champion(session, track=track, channel=channel)
    if current != against:
        now = "no champion" if current is None else f"candidate-{current} is the champion"
        raise ChampionChangedError(
            f"the champion of {track.name}/{channel} changed while the gate measured candidate-{candidate.id} "
            f"against {'no champion' if against is None else f'candidate-{against}'}: {now} now. Nothing is "
            "recorded; the release's run is run again, against the champion in place.",
            track=track.name,
        )
    evals.record_scores(session, candidate=candidate, scores=scores)
    return add_promotion(
        session,
        track=candidate.track,
        channel=channel,
        decision=GateDecision.PROMOTE if promote else GateDecision.REJECT,
        to_candidate=candidate,
        reasons=list(reasons),
        actor_kind=ActorKind.GATE,
        actor=ActorKind.GATE.value,
    )


def reign(session: Session, *, track: Track, channel: str) -> Promotion | None:
    """The promotion (or rollback) that made the current champion of a channel."""
    query = select(Promotion).where(
        Promotion.track_id == track.id, Promotion.channel == channel, Promotion.decision != GateDecision.REJECT
    )
    return session.scalars(query.order_by(Promotion.id.desc()).limit(1)).one_or_none()


def champion(session: Session, *, track: Track, channel: str) -> Candidate | None:
    """The candidate currently promoted on a track's channel, if any."""
    latest = reign(session, track=track, channel=channel)
    if latest is None or latest.to_candidate_id is None:
        return None
    return session.get(Candidate, latest.to_candidate_id)


def channel_history(session: Session, *, track: Track, channel: str) -> list[Promotion]:
    """Every decision recorded on a track's channel (promotions, rejections, rollbacks), oldest first."""
    query = select(Promotion).where(Promotion.track_id == track.id, Promotion.channel == channel)
    return list(session.scalars(query.order_by(Promotion.id)))


def earlier_champions(session: Session, *, track: Track, channel: str) -> list[Candidate]:
    """Where a rollback of a channel may go: the champions the current one was promoted over, nearest first.

    The channel's history is replayed as a stack: a promotion puts its candidate on top; a rollback takes
    the stack back down to the candidate it returned to, so that a second rollback goes further back, never
    forth to the champion just rolled back from. (A rollback to a candidate not on the stack, as one recorded
    before rollbacks walked back, counts as a promotion.) The current champion is not in the list.
    """
    stack: list[int] = []
    for row in channel_history(session, track=track, channel=channel):
        target = row.to_candidate_id
        if row.decision is GateDecision.REJECT or target is None:
            continue
        if row.decision is GateDecision.ROLLBACK and target in stack[:-1]:
            stack.pop()
            while stack[-1] != target:
                stack.pop()
        else:
            stack.append(target)
    return [get_candidate(session, candidate_id=i) for i in reversed(stack[:-1])]
