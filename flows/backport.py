"""Backporting: the track's newest Δ applied to an older release, m_old + α·Δ_newest, with no training
(the paper's backporting), evaluated against that release's bare base and recorded as a `backport`
candidate of it. A backport never enters the release chain: no later release carries its Δ, and it is not
gated onto the track's channel (promote it by hand, `promote`, if it should serve)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from ..errors import NotFoundError
from ..operations.lifecycle import check_files
from ..operations.names import release_ref
from ..operations.scores import store_evaluation
from ..operations.settings import Workspace
from ..operations.tracks import load_spec
from ..storage import evals, releases, runs
from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.evaluate import Evaluation
from ..tasks.track import TrackSpec, spec_digest
from ..tasks.training.gpus import gpu_lease
from ..terms import CandidateKind, EvalSubject, ReleaseState
from .recycle import Plan, carry_over, fetch, run_eval


@task
def backport_plan(where: Workspace, track: str, to: str, alpha: float) -> Plan:
    """The older release named `to`, and the track's newest Δ: the one registered from the candidate of
    the last release that is done, in the track's order.

    Raises:
        NotFoundError: no such release, or no release of the track is done yet.
    """
    with session_scope(where.registry().engine) as session:
        row = rows.get_track(session, name=track)
        target = releases.by_name(session, track=row, name=to)
        order = releases.in_order(session, track=row)
        done = [r for r in order if releases.status(session, release=r).state is ReleaseState.DONE]
        delta = None if not done else runs.recycled_delta(session, release=done[-1])
        if delta is None:
            raise NotFoundError(f"track {track} has no release done yet: there is no Δ to backport.", ref=track)
        diff_id = rows.public_id(delta)
        reason = f"{diff_id}, the track's newest Δ (of {releases.label(done[-1])}), backported"
        ref = release_ref(target)
        target_id = target.id
    work = where.data_dir / "runs" / track / ref.revision[:12] / f"backport-{diff_id}-a{alpha:g}"
    return Plan(track, target_id, ref, diff_id, reason, None, work, alpha)


@task
def record_backport(
    where: Workspace,
    the_plan: Plan,
    spec: TrackSpec,
    model: Path,
    scores: dict[EvalSubject, Evaluation],
) -> int:
    """Record the backport as a candidate of the older release (with the track's spec version it was made with),
    with its and its base's eval results, once the release's files are checked to be still those its sha names."""
    check_files(where, release_id=the_plan.release_id, release=the_plan.release)
    with session_scope(where.registry().engine) as session:
        release = rows.get_release(session, release_id=the_plan.release_id)
        assert the_plan.carried_diff is not None
        candidate = runs.record_candidate(
            session,
            release=release,
            mode=None,
            alpha=the_plan.alpha,
            model_uri=str(model),
            source_diff=rows.get_diff(session, ref=the_plan.carried_diff),
            finetune=None,
            carry_reason=the_plan.carry_reason,
            kind=CandidateKind.BACKPORT,
            spec=rows.spec_version(
                session, track=release.track, spec=spec.model_dump(mode="json"), digest=spec_digest(spec)
            ),
        )
        if not evals.eval_results(session, candidate=candidate):
            for subject, evaluation in scores.items():
                owner = candidate if subject is EvalSubject.CANDIDATE else None
                stored = store_evaluation(where.registry(), evaluation=evaluation)
                evals.add_eval_results(session, scores=stored, subject=subject, candidate=owner, release=release)
        return candidate.id


@flow(name="backport", flow_run_name="{track}/backport-to-{to}", log_prints=True)
def backport(track: str, to: str, alpha: float | None = None, data_dir: Path | None = None) -> int:
    """Apply the track's newest Δ to its older release `to` (an id, a ref or folder, or a sha), evaluate
    it against that release's base, and record it as a backport candidate; return the candidate's id.
    `alpha` defaults to the track's."""
    where = Workspace.at(data_dir)
    spec = load_spec(where.registry(), track=track)
    scale = spec.recycle.alpha if alpha is None else alpha
    the_plan = backport_plan(where, track, to, scale)
    base = fetch(where, the_plan)
    model = carry_over(where, the_plan, base)
    with gpu_lease(count=1, gpus=where.gpus()) as lease:
        scores = {
            EvalSubject.CANDIDATE: run_eval(the_plan, EvalSubject.CANDIDATE, model, spec, lease),
            EvalSubject.BASE: run_eval(the_plan, EvalSubject.BASE, base, spec, lease),
        }
    candidate_id = record_backport(where, the_plan, spec, model, scores)
    get_run_logger().info(
        "%s: backported %s onto %s as candidate-%d", track, the_plan.carried_diff, the_plan.label, candidate_id
    )
    return candidate_id
