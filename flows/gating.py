"""The gate's step of a recycle run: the decision against the base and the champion, recorded once, and the
promoted candidate published to the track's Hub repo with its release tag and the channel's tag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from ..storage import registry as rows
from ..storage import runs
from ..storage.db import session_scope
from ..storage.models import EvalResult
from ..tasks.evaluate import EvalRecord
from ..tasks.gate import Decision, decide
from ..tasks.hub import move_tag, publish
from ..terms import EvalSubject, GateDecision
from .settings import Workspace
from .tracks import TrackSpec


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision, and the champion it was measured against (with its scores)."""

    decision: Decision
    champion: str | None
    champion_scores: list[EvalRecord]


@task
def gate_and_promote(
    where: Workspace, spec: TrackSpec, candidate_id: int, scores: dict[EvalSubject, list[EvalRecord]]
) -> GateOutcome:
    """Apply the gate against the base and the champion, and record the eval results and the decision;
    a resumed run finds the decision it made before."""
    with session_scope(where.registry().engine) as session:
        candidate = runs.get_candidate(session, candidate_id=candidate_id)
        inputs = runs.gate_inputs(session, candidate=candidate, channel=spec.channel)
        champion = None if inputs.champion is None else rows.public_id(inputs.champion)
        champion_scores = [_record(r) for r in inputs.champion_scores]
        if inputs.decided is not None:
            decided = Decision(inputs.decided.decision is GateDecision.PROMOTE, tuple(inputs.decided.reasons))
            _log_decision(decided, champion, again=True)
            return GateOutcome(decided, champion, champion_scores)
        decision = decide(
            rules=spec.gate,
            candidate=scores[EvalSubject.CANDIDATE],
            base=scores[EvalSubject.BASE],
            champion=None if inputs.champion is None else champion_scores,
        )
        runs.record_gate_decision(
            session,
            candidate=candidate,
            channel=spec.channel,
            scores={subject: [score_of(r) for r in records] for subject, records in scores.items()},
            promote=decision.promote,
            reasons=decision.reasons,
        )
    _log_decision(decision, champion, again=False)
    return GateOutcome(decision, champion, champion_scores)


def _log_decision(decision: Decision, champion: str | None, *, again: bool) -> None:
    verdict = "promote" if decision.promote else "reject"
    against = f"against champion {champion}" if champion else "no champion before"
    earlier = ", decided by an earlier attempt" if again else ""
    get_run_logger().info("gate: %s (%s%s): %s", verdict, against, earlier, "; ".join(decision.reasons))


def score_of(record: EvalRecord) -> runs.Score:
    """An eval record as the registry records it."""
    fields = record.model_dump(exclude={"lm_eval_version"})
    return runs.Score(**fields, harness_version=record.lm_eval_version)


def _record(row: EvalResult) -> EvalRecord:
    fields = {f: getattr(row, f) for f in EvalRecord.model_fields if f != "lm_eval_version"}
    return EvalRecord(**fields, lm_eval_version=row.harness_version)


@task
def publish_champion(spec: TrackSpec, candidate: Path, *, release: str) -> None:
    """Upload the promoted candidate to the track's Hub repo, tag it for its release (`publish.tag_format`) and
    move the channel's tag to it, as `graft promote` and `graft rollback` move it."""
    assert spec.publish is not None
    tag = spec.publish.tag_format.format(track=spec.name, release=release)
    sha = publish(folder=candidate, repo_id=spec.publish.repo, tag=tag, private=spec.publish.private)
    move_tag(repo_id=spec.publish.repo, tag=spec.channel, revision=sha)
    get_run_logger().info(
        "publish: the candidate is %s at tag %s on the Hub; tag %s follows it", spec.publish.repo, tag, spec.channel
    )
