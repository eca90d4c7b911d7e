"""A person's last step on a track whose gate says `approval: required`: the candidate that passed the rules
waits, recorded as an approval request, and its run suspends itself (holding no GPU and no process) until a
person approves or rejects it in the Prefect UI's form or with `graft approve` / `graft reject`.

Either way the decision is recorded once, as a promotion row whose actor is the person and whose reasons are
the rules' and the person's comment; the CLI then resumes the suspended run with the same answer, and the run,
finding the decision made, finishes. A run with no deployment (the demo's inline runs) cannot suspend: it ends
and the candidate waits for `graft approve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment
from pydantic import Field

from ..errors import PromotionError
from ..storage import Registry, approvals, evals, runs
from ..storage import registry as rows
from ..storage.db import session_scope
from ..storage.models import Promotion
from ..tasks.gate import Decision
from ..tasks.track import TrackSpec
from ..terms import ActorKind, GateDecision, Verdict
from . import events
from .promotions import checked, record


class Approval(RunInput):
    """A person's decision on a candidate that waits for approval (the form the Prefect UI shows)."""

    approve: bool = Field(description="Promote the candidate (true) or reject it (false).")
    approver: str = Field(min_length=1, max_length=200, description="Your name, as the promotion row records it.")
    comment: str = Field("", max_length=2000, description="Why; recorded among the decision's reasons.")


@dataclass(frozen=True)
class Approved:
    """A person's decision as recorded; `before` when it had been made already (by this answer or another)."""

    promotion: str
    candidate: str
    decision: GateDecision
    actor: str
    reasons: list[str]
    before: bool

    def line(self) -> str:
        """What a person is told of it."""
        verb = "approved and promoted" if self.decision is GateDecision.PROMOTE else "rejected"
        already = " (decided before)" if self.before else ""
        return f"{self.candidate} {verb} by {self.actor}{already}: {self.promotion}"


def decide_approval(registry: Registry, *, candidate: str | int, answer: Approval) -> Approved:
    """Record a person's answer to a candidate's approval request: a promotion (the channel's Hub tag moved
    first when the track publishes) or a rejection, by the person. An answer to a candidate decided already
    returns that decision, with `before` set.

    Raises:
        NotFoundError: no such candidate.
        PromotionError: the candidate waits for no approval.
        ModelFolderError, HubPermissionError, HubNotFoundError, HubUnavailableError: as `graft promote`.
    """
    comment = f"{'approved' if answer.approve else 'rejected'} by {answer.approver}" + (
        f": {answer.comment}" if answer.comment else ""
    )
    with session_scope(registry.engine) as session:
        row = rows.get_candidate(session, ref=str(candidate))
        public, track, release = rows.public_id(row), row.track.name, row.release.revision[:12]
        request = approvals.approval_request(session, candidate=row)
        if request is None:
            raise PromotionError(
                f"{public} waits for no approval (its gate did not ask for one); `graft promote {public}` promotes "
                "it by hand.",
                track=track,
            )
        made = approvals.person_decision(session, candidate=row)
        if made is not None:
            return _approved(made, before=True)
        reasons = [*request.reasons, comment]
        if not answer.approve:
            rejected = runs.add_promotion(
                session, track=row.track, channel=request.channel, decision=GateDecision.REJECT, to_candidate=row,
                reasons=reasons, actor_kind=ActorKind.USER, actor=answer.approver,
            )  # fmt: skip
            done = _approved(rejected, before=False)
        else:
            target = checked(session, track=row.track, candidate=row)
    if answer.approve:
        moved = record(registry, target=target, decision=GateDecision.PROMOTE, actor=answer.approver, reasons=reasons)
        done = Approved(moved.promotion, public, GateDecision.PROMOTE, answer.approver, reasons, before=False)
    event = events.CANDIDATE_PROMOTED if answer.approve else events.CANDIDATE_REJECTED
    with session_scope(registry.engine) as session:
        scores = evals.eval_results(session, candidate=rows.get_candidate(session, ref=str(candidate)))
        events.about_candidate(
            event, track=track, candidate=row.id, release=release, scores=scores, channel=request.channel,
            actor=answer.approver, reasons=reasons,
        )  # fmt: skip
    return done


def await_approval(registry: Registry, *, spec: TrackSpec, candidate_id: int, reasons: tuple[str, ...]) -> Decision:
    """In a recycle run whose candidate waits for approval: the decision when a person made it already; else
    suspend the run until one does (in the Prefect UI's form, or `graft approve`) and record it. A run with no
    deployment cannot be suspended: it returns a pending decision and the candidate waits for `graft approve`.

    Raises:
        Pause: the run suspends itself (Prefect ends its process; resuming runs the flow again).
    """
    public = f"candidate-{candidate_id}"
    with session_scope(registry.engine) as session:
        made = approvals.person_decision(session, candidate=runs.get_candidate(session, candidate_id=candidate_id))
        if made is not None:
            return _decision(_approved(made, before=True))
    asks = f"`graft approve {public}` or `graft reject {public} --reason ...`"
    if deployment.id is None:
        get_run_logger().warning("approval: %s waits for a person's decision: %s", public, asks)
        return Decision(Verdict.WAIT, (*reasons, f"waiting for a person's approval: {asks}"))
    get_run_logger().info("approval: %s passed the gate's rules; suspending until a person decides (%s)", public, asks)
    form = Approval.with_initial_data(
        description=f"**{public}** passed the gate of {spec.name}/{spec.channel}:\n\n"
        + "\n".join(f"- {r}" for r in reasons),
        approve=True,
    )
    hours = spec.gate.approval_timeout_hours
    answer = suspend_flow_run(wait_for_input=form, key=f"approval-{public}", timeout=round(hours * 3600))
    done = decide_approval(registry, candidate=candidate_id, answer=answer)
    get_run_logger().info("approval: %s", done.line())
    return _decision(done)


def resume_waiting_run(registry: Registry, *, candidate: str | int, answer: Approval) -> str | None:
    """Resume the candidate's suspended run with `answer`, so that it finishes; return its flow run id, or None
    when no run of it is suspended (an inline run, or one that ended)."""
    with session_scope(registry.engine) as session:
        request = approvals.approval_request(session, candidate=rows.get_candidate(session, ref=str(candidate)))
        run_id = None if request is None else request.flow_run_id
    if run_id is None:
        return None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            return None
    if run.state is None or not run.state.is_paused():
        return None
    resume_flow_run(UUID(run_id), run_input=answer.model_dump(mode="json"))
    return run_id


def _approved(row: Promotion, *, before: bool) -> Approved:
    return Approved(
        rows.public_id(row), f"candidate-{row.to_candidate_id}", row.decision, row.actor, list(row.reasons), before
    )


def _decision(done: Approved) -> Decision:
    return Decision.recorded(done.decision, done.reasons)
