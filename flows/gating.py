"""The gate's step of a recycle run: the champion's comparable evaluation (stored, or made again when the stored
one was evaluated differently), the decision on paired evidence against the base and the champion, recorded
once with every evaluation's samples, a person's approval asked for when the track requires it, and the promoted
candidate published to the track's Hub repo with its release tag and the channel's tag."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from ..fs import write_text_atomic
from ..operations import verdicts
from ..operations.report import comparison_artifact
from ..operations.scores import stored_evaluation
from ..operations.settings import Workspace
from ..operations.verdicts import ChampionEvidence, GateOutcome
from ..storage import approvals, runs
from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.evaluate import Evaluation, run_evaluation
from ..tasks.evidence import pairs
from ..tasks.gate import Decision, decide
from ..tasks.hub import move_tag, publish
from ..tasks.track import TrackSpec
from ..tasks.training.gpus import GpuLease
from ..terms import EvalSubject, Verdict


@task
def champion_evaluation(
    where: Workspace, spec: TrackSpec, candidate_id: int, candidate: Evaluation, work: Path, lease: GpuLease
) -> ChampionEvidence | None:
    """The champion's evaluation to compare the candidate with: the stored one when it was made as the
    candidate's was (same fingerprint but for the model) on every gated metric, else the champion evaluated
    again now, saying why (kept in the working folder once done). None: no champion, or decided (or waiting
    for a person) already."""
    with session_scope(where.registry().engine) as session:
        mine = runs.get_candidate(session, candidate_id=candidate_id)
        inputs = runs.gate_inputs(session, candidate=mine, channel=spec.channel)
        if inputs.champion is None or inputs.decided is not None or approvals.approval_request(session, candidate=mine):
            return None
        held = inputs.champion.id
        holder, folder = rows.public_id(inputs.champion), Path(inputs.champion.model_uri)
        stored = stored_evaluation(where.registry(), rows=inputs.champion_scores)
    saved = work / "evals" / "champion.json"
    if saved.is_file():
        return ChampionEvidence(held, Evaluation.model_validate_json(saved.read_text()), again=True)
    found = pairs(candidate, stored, refs=spec.gate.metrics)
    differ = {str(ref): why for ref, why in found.items() if isinstance(why, str)}
    if not differ:
        get_run_logger().info("gate: %s's stored evaluation is comparable with the candidate's", holder)
        return ChampionEvidence(held, stored, again=False)
    why = "; ".join(f"{ref}: {reason}" for ref, reason in differ.items())
    get_run_logger().warning(
        "gate: %s's stored evaluation cannot be compared with the candidate's (%s; the candidate's first); "
        "evaluating it again",
        holder,
        why,
    )
    lease.pin()
    again = run_evaluation(model_dir=folder, suite=spec.eval)
    write_text_atomic(saved, again.model_dump_json())
    return ChampionEvidence(held, again, again=True)


@task
def gate_and_promote(
    where: Workspace,
    spec: TrackSpec,
    candidate_id: int,
    evaluations: dict[EvalSubject, Evaluation],
    evidence: ChampionEvidence | None,
    comparison_key: str,
) -> GateOutcome:
    """Apply the gate against the base and the champion, and record the evaluations (with their samples) and
    the decision, or the request for a person's approval; a resumed run finds what it did before.

    Raises:
        ChampionChangedError: another decision changed the champion while the gate measured against it.
    """
    registry = where.registry()
    earlier = verdicts.earlier_decision(registry, candidate_id=candidate_id, channel=spec.channel)
    if earlier is not None:
        _log_decision(earlier.decision, earlier.champion, again=True)
        return earlier
    mine = evaluations[EvalSubject.CANDIDATE]
    champion = None if evidence is None else evidence.evaluation
    decision = decide(
        rules=spec.gate,
        candidate=mine.records,
        base=evaluations[EvalSubject.BASE].records,
        champion=None if champion is None else champion.records,
        pairs=None if champion is None else pairs(mine, champion, refs=spec.gate.metrics),
    )
    holder = None
    if evidence is not None:
        holder = f"candidate-{evidence.champion_id}"
        names = (f"candidate-{candidate_id}", holder)
        comparison_artifact(mine, evidence.evaluation, names=names, rules=spec.gate, key=comparison_key)
    decision = verdicts.record_decision(
        registry, spec=spec, candidate_id=candidate_id, decision=decision, evaluations=evaluations, evidence=evidence,
        flow_run_id=flow_run.get_id(),
    )  # fmt: skip
    _log_decision(decision, holder, again=False)
    return GateOutcome(decision, holder, champion)


def _log_decision(decision: Decision, champion: str | None, *, again: bool) -> None:
    verdict = {Verdict.PROMOTE: "promote", Verdict.WAIT: "wait for a person's approval", Verdict.REJECT: "reject"}[
        decision.verdict
    ]
    against = f"against champion {champion}" if champion else "no champion before"
    earlier = ", decided by an earlier attempt" if again else ""
    get_run_logger().info("gate: %s (%s%s): %s", verdict, against, earlier, "; ".join(decision.reasons))


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
