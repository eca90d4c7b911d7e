"""A gate's decision, kept: what an earlier attempt decided (a resumed run decides nothing again), and a new
decision recorded once, with every evaluation's samples, under the channel's lock (or the request for a
person's approval), with the events that say so."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..storage import Registry, approvals, runs
from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.evaluate import Evaluation
from ..tasks.gate import Decision
from ..tasks.track import TrackSpec
from ..terms import ActorKind, ApprovalRule, EvalSubject, Verdict
from . import events
from .scores import store_evaluation, stored_evaluation


@dataclass(frozen=True)
class ChampionEvidence:
    """The champion's evaluation the candidate is compared with (`champion_id`: the candidate it is); `again`
    when it was made in this run, because the stored one was evaluated differently."""

    champion_id: int
    evaluation: Evaluation
    again: bool


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision, and the champion it was measured against (with its evaluation)."""

    decision: Decision
    champion: str | None
    champion_evaluation: Evaluation | None


def earlier_decision(registry: Registry, *, candidate_id: int, channel: str) -> GateOutcome | None:
    """What the gate decided on the candidate before (or the approval it asked for), if it did: a resumed run's."""
    with session_scope(registry.engine) as session:
        candidate = runs.get_candidate(session, candidate_id=candidate_id)
        inputs = runs.gate_inputs(session, candidate=candidate, channel=channel)
        request = approvals.approval_request(session, candidate=candidate)
        if inputs.decided is not None:
            earlier = Decision.recorded(inputs.decided.decision, inputs.decided.reasons)
        elif request is not None:
            earlier = Decision(Verdict.WAIT, tuple(request.reasons))
        else:
            return None
        if inputs.champion is None:
            return GateOutcome(earlier, None, None)
        holder = rows.public_id(inputs.champion)
    return GateOutcome(earlier, holder, stored_evaluation(registry, rows=inputs.champion_scores))


def record_decision(
    registry: Registry,
    *,
    spec: TrackSpec,
    candidate_id: int,
    decision: Decision,
    evaluations: Mapping[EvalSubject, Evaluation],
    evidence: ChampionEvidence | None,
    flow_run_id: str | None,
) -> Decision:
    """Keep every evaluation with its samples, then record the gate's decision on the candidate, or, when it
    promotes and the track requires approval, the request for a person's (the decision is then to wait); emit
    the events that say so. Returns the decision recorded.

    Raises:
        ChampionChangedError: the champion is no longer the one `evidence` measured (a decision recorded
            meanwhile): the evaluations are kept, the decision is not.
    """
    with registry.store.writing():  # gc keeps the samples' blobs until the rows owning them are committed
        recorded = {subject: store_evaluation(registry, evaluation=e) for subject, e in evaluations.items()}
        if evidence is not None and evidence.again:
            recorded[EvalSubject.CHAMPION] = store_evaluation(registry, evaluation=evidence.evaluation)
        with session_scope(registry.engine) as session:
            candidate = runs.get_candidate(session, candidate_id=candidate_id)
            track, release = candidate.track.name, candidate.release.revision[:12]
        scores = evaluations[EvalSubject.CANDIDATE].records
        events.about_candidate(
            events.CANDIDATE_EVALUATED, track=track, candidate=candidate_id, release=release, scores=scores
        )
        ask = decision.promote and spec.gate.approval is ApprovalRule.REQUIRED
        with session_scope(registry.engine) as session:
            candidate = runs.get_candidate(session, candidate_id=candidate_id)
            if ask:
                approvals.request_approval(
                    session, candidate=candidate, channel=spec.channel, scores=recorded, reasons=decision.reasons,
                    flow_run_id=flow_run_id,
                )  # fmt: skip
                decision = Decision(Verdict.WAIT, decision.reasons)
            else:
                runs.record_gate_decision(
                    session, candidate=candidate, channel=spec.channel, scores=recorded, promote=decision.promote,
                    reasons=decision.reasons, against=None if evidence is None else evidence.champion_id,
                )  # fmt: skip
    event = {
        Verdict.WAIT: events.APPROVAL_REQUESTED,
        Verdict.PROMOTE: events.CANDIDATE_PROMOTED,
        Verdict.REJECT: events.CANDIDATE_REJECTED,
    }[decision.verdict]
    events.about_candidate(
        event, track=track, candidate=candidate_id, release=release, scores=scores, channel=spec.channel,
        actor=ActorKind.GATE, reasons=list(decision.reasons),
    )  # fmt: skip
    return decision
