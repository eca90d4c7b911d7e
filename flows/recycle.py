"""Algorithm 1 as Prefect flows: watch a track's releases, and for each new one carry the track's
fine-tuning over, fine-tune, register the new Δ, evaluate, gate and promote.

Tasks hand each other paths and ids only. Each step leaves its result in the run's working folder
(`DATA_DIR/runs/TRACK/SHA[:12]/`: written atomically) or in the registry, and finds it there when the
run is started again, so re-running a crashed run resumes after its last completed step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, tags, task
from prefect.deployments import run_deployment

from flows.progress import progress_artifact
from flows.registry import export_diff, open_registry, register_diff
from flows.report import report_run
from flows.settings import GraftSettings
from flows.tracks import HubRefsSource, HubReposSource, LocalSource, TrackSpec, parse_track
from storage import registry as rows
from storage.db import session_scope
from tasks import deltas
from tasks.evaluate import EvalRecord, evaluate
from tasks.finetune import finetune
from tasks.gate import Decision, decide
from tasks.hub import ReleaseRef, discover_local, discover_refs, discover_repos, download, publish
from tasks.launch import run_launch

RECYCLE_DEPLOYMENT = "recycle-then-finetune/recycle-then-finetune"
ACCELERATE_CONFIGS = {
    kind: Path(__file__).parents[1] / "deployments" / "accelerate" / name
    for kind, name in (("fsdp", "fsdp.yaml"), ("deepspeed", "deepspeed_zero3.yaml"))
}


def load_spec(*, track: str) -> TrackSpec:
    """The validated spec of a registered track.

    Raises:
        NotFoundError: no such track.
        TrackError: its stored spec no longer validates (add the track file again).
    """
    with session_scope(open_registry(GraftSettings()).engine) as session:
        stored = rows.get_track(session, name=track).spec
    return parse_track(stored, base_dir=Path("/"), origin=f"track {track} in the registry")


@task
def discover(spec: TrackSpec) -> list[ReleaseRef]:
    """The releases the track's source offers now, oldest first."""
    source = spec.source
    if isinstance(source, LocalSource):
        return discover_local(release_dir=source.release_dir)
    if isinstance(source, HubRefsSource):
        return discover_refs(repo_id=source.repo, ref_pattern=source.ref_pattern)
    assert isinstance(source, HubReposSource)
    return discover_repos(author=source.author, name_pattern=source.name_pattern)


@task
def record_releases(track: str, found: list[ReleaseRef]) -> list[tuple[int, str]]:
    """Record the releases; return (id, sha) of those never seen before, in order."""
    new = []
    with session_scope(open_registry(GraftSettings()).engine) as session:
        row = rows.get_track(session, name=track)
        for ref in found:
            path = None if ref.path is None else str(ref.path)
            release, created = rows.record_release(
                session, track=row, repo_id=ref.repo_id, revision=ref.revision, ref=ref.ref, path=path
            )
            if created:
                new.append((release.id, release.revision))
    return new


@flow(name="watch-releases", log_prints=True)
def watch_releases(track: str, dispatch: Literal["inline", "deployment"] = "inline") -> list[int]:
    """Find a track's new releases and start one recycle run per new release.

    `inline` runs them here, one after the other, in release order (the embedded default);
    `deployment` starts runs of the recycle deployment on its work pool with the idempotency key
    TRACK:SHA, so a release seen twice runs once.
    """
    spec = load_spec(track=track)
    new = record_releases(track, discover(spec))
    print(f"track {track}: {len(new)} new release(s)")
    for release_id, sha in new:
        with tags(f"track:{track}", f"release:{sha[:12]}"):
            if dispatch == "inline":
                recycle_then_finetune(track=track, release_id=release_id)
            else:
                run_deployment(
                    RECYCLE_DEPLOYMENT,
                    parameters={"track": track, "release_id": release_id},
                    idempotency_key=f"{track}:{sha}",
                    tags=[f"track:{track}", f"release:{sha[:12]}"],
                    timeout=0,
                )
    return [release_id for release_id, _ in new]


@flow(name="run-series", log_prints=True)
def run_series(track: str, releases: list[int], modes: list[str] | None = None) -> list[bool]:
    """Backfill: Algorithm 1 over a list of a track's release ids, in order (one mode per release,
    or the track's mode for all)."""
    return [
        recycle_then_finetune(track=track, release_id=release_id, mode=None if modes is None else modes[i]).promote
        for i, release_id in enumerate(releases)
    ]


@dataclass(frozen=True)
class Plan:
    """What one recycle run works on: the release, the Δ it carries over, and its working folder."""

    track: str
    release_id: int
    release: ReleaseRef
    carried_diff: str | None
    mode: str
    work: Path


@task
def plan(track: str, release_id: int, spec: TrackSpec, mode: str | None) -> Plan:
    """Pick the Δ to carry over: none for the track's first release (Algorithm 1, line 4)."""
    settings = GraftSettings()
    mode = mode or spec.recycle.mode
    with session_scope(open_registry(settings).engine) as session:
        release = rows.get_release(session, release_id=release_id)
        carried = rows.carried_diff(session, track=release.track, mode=mode, before=release)
        ref = ReleaseRef(
            repo_id=release.repo_id,
            revision=release.revision,
            ref=release.ref,
            path=None if release.path is None else Path(release.path),
        )
        carried_id = None if carried is None else rows.public_id(carried)
        work = settings.data_dir / "runs" / track / release.revision[:12]
    return Plan(track, release_id, ref, carried_id, mode if carried_id else "none", work)


@task
def fetch(the_plan: Plan) -> Path:
    """The release's model folder: its local path, or a download pinned to its sha (its progress
    artifact goes from 0 to 100 % when the download completes)."""
    release = the_plan.release
    if release.path is not None:
        return release.path
    with progress_artifact(key=_key(the_plan, "download"), description=f"download {release}") as report:
        folder = download(release=release)
        report(1, 1)
    return folder


@task
def carry_over(the_plan: Plan, base: Path, alpha: float) -> Path:
    """base + alpha·Δ, with Δ exported from the registry."""
    out = the_plan.work / "transferred"
    if out.is_dir():
        return out
    assert the_plan.carried_diff is not None
    diff_dir = export_diff(
        open_registry(GraftSettings()), ref=the_plan.carried_diff, out=the_plan.work / "carried-diff", overwrite=True
    )
    with progress_artifact(key=_key(the_plan, "transfer"), description="base + α·Δ") as report:
        deltas.apply(diff=diff_dir, target=base, out=out, alpha=alpha, progress=report)
    return out


@task
def fine_tune(the_plan: Plan, start: Path, spec: TrackSpec) -> Path:
    """The track's recipe on `start`, in this process, or under `accelerate launch` when the track
    asks for several GPU processes; the loss curve (one process) is kept next to the candidate."""
    out = the_plan.work / "candidate"
    if out.is_dir():
        return out
    launch = spec.finetune.launch
    if launch.processes == 1:
        with progress_artifact(key=_key(the_plan, "finetune"), description="fine-tuning steps") as report:
            result = finetune(
                model_dir=start, data=spec.finetune.data, recipe=spec.finetune.recipe, out_dir=out, progress=report
            )
        (the_plan.work / "loss.json").write_text(json.dumps(result.loss_curve))
        return out
    if launch.config is None:
        launch = launch.model_copy(update={"config": ACCELERATE_CONFIGS[launch.distributed]})
    recipe = the_plan.work / "recipe.json"
    recipe.write_text(spec.finetune.recipe.model_dump_json())
    run_launch(launch=launch, model_dir=start, data=spec.finetune.data, recipe_json=recipe, out_dir=out)
    return out


@task
def record_candidate(the_plan: Plan, spec: TrackSpec, candidate: Path) -> int:
    """Record the candidate once per working folder; return its id."""
    with session_scope(open_registry(GraftSettings()).engine) as session:
        release = rows.get_release(session, release_id=the_plan.release_id)
        existing = rows.candidate_at(session, release=release, model_uri=str(candidate))
        if existing is not None:
            return existing.id
        source = None if the_plan.carried_diff is None else rows.get_diff(session, ref=the_plan.carried_diff)
        row = rows.add_candidate(
            session,
            track=release.track,
            release=release,
            mode=the_plan.mode,
            alpha=0.0 if source is None else spec.recycle.alpha,
            model_uri=str(candidate),
            source_diff=source,
        )
        return row.id


@task
def new_diff(the_plan: Plan, candidate: Path, base: Path, candidate_id: int) -> str:
    """Δ_i = M*_i − M_i, registered with the Δ it was carried from as its parent."""
    out = the_plan.work / "diff"
    if not out.is_dir():
        deltas.diff(finetuned=candidate, base=base, out=out)
    done = register_diff(
        open_registry(GraftSettings()),
        diff_dir=out,
        track=the_plan.track,
        parent=the_plan.carried_diff,
        candidate_id=candidate_id,
        base_release_id=the_plan.release_id,
    )
    return done.id


@task
def run_eval(the_plan: Plan, subject: str, model: Path, spec: TrackSpec) -> list[EvalRecord]:
    """The track's eval suite on one model folder (kept in the working folder once done)."""
    saved = the_plan.work / "evals" / f"{subject}.json"
    if saved.is_file():
        return [EvalRecord.model_validate(r) for r in json.loads(saved.read_text())]
    records = evaluate(model_dir=model, suite=spec.eval)
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".partial")
    tmp.write_text(json.dumps([r.model_dump(mode="json") for r in records]))
    tmp.rename(saved)
    return records


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision, and the champion it was measured against (with its scores)."""

    decision: Decision
    champion: str | None
    champion_scores: list[EvalRecord]


@task
def gate_and_promote(
    the_plan: Plan, spec: TrackSpec, candidate_id: int, scores: dict[str, list[EvalRecord]]
) -> GateOutcome:
    """Record the eval results, apply the gate against the base and the champion, record the decision."""
    with session_scope(open_registry(GraftSettings()).engine) as session:
        candidate = rows.get_candidate(session, candidate_id=candidate_id)
        release = rows.get_release(session, release_id=the_plan.release_id)
        decided = rows.decision_for(session, candidate=candidate)
        if decided is None:
            champion = rows.champion(session, track=release.track, channel=spec.channel)
        elif decided.from_candidate_id is None:
            champion = None
        else:  # a re-run: report the champion the decision was measured against
            champion = rows.get_candidate(session, candidate_id=decided.from_candidate_id)
        champion_id = None if champion is None else rows.public_id(champion)
        champion_scores = (
            [] if champion is None else [_record(r) for r in rows.eval_results(session, candidate=champion)]
        )
        if decided is not None:
            decision = Decision(decided.decision == "promote", tuple(decided.reasons))
            return GateOutcome(decision, champion_id, champion_scores)
        for subject, records in scores.items():
            rows.add_eval_results(
                session,
                scores=[_score(r) for r in records],
                subject=subject,
                candidate=candidate if subject == "candidate" else None,
                release=release,
            )
        decision = decide(
            rules=spec.gate,
            candidate=scores["candidate"],
            base=scores["base"],
            champion=None if champion is None else champion_scores,
        )
        rows.add_promotion(
            session,
            track=release.track,
            channel=spec.channel,
            decision="promote" if decision.promote else "reject",
            to_candidate=candidate,
            reasons=list(decision.reasons),
            actor="gate",
        )
        return GateOutcome(decision, champion_id, champion_scores)


def _score(record: EvalRecord) -> rows.Score:
    fields = record.model_dump(exclude={"lm_eval_version"})
    return rows.Score(**fields, harness_version=record.lm_eval_version)


def _record(row: rows.EvalResult) -> EvalRecord:
    fields = {f: getattr(row, f) for f in EvalRecord.model_fields if f != "lm_eval_version"}
    return EvalRecord(**fields, lm_eval_version=row.harness_version)


def _key(the_plan: Plan, step: str) -> str:
    return f"{the_plan.track}-{the_plan.release.revision[:12]}-{step}"


@flow(name="recycle-then-finetune", log_prints=True)
def recycle_then_finetune(track: str, release_id: int, mode: str | None = None) -> Decision:
    """One step of Algorithm 1 for one release of a track: M*_i = FT(M_i + α·Δ_{i−1}).

    `mode` overrides the track's recycle mode (`iterative`, `direct` or `none`) for this run.
    """
    spec = load_spec(track=track)
    the_plan = plan(track, release_id, spec, mode)
    base = fetch(the_plan)
    start = base if the_plan.carried_diff is None else carry_over(the_plan, base, spec.recycle.alpha)
    candidate = fine_tune(the_plan, start, spec)
    candidate_id = record_candidate(the_plan, spec, candidate)
    diff_id = new_diff(the_plan, candidate, base, candidate_id)
    scores = {
        "candidate": run_eval(the_plan, "candidate", candidate, spec),
        "base": run_eval(the_plan, "base", base, spec),
    }
    if the_plan.carried_diff is not None:
        scores["transferred"] = run_eval(the_plan, "transferred", start, spec)
    outcome = gate_and_promote(the_plan, spec, candidate_id, scores)
    if outcome.decision.promote and spec.publish is not None:
        tag = spec.publish.tag_format.format(track=track, release=the_plan.release.revision[:12])
        publish(folder=candidate, repo_id=spec.publish.repo, tag=tag, private=spec.publish.private)
    report_run(
        key=_key(the_plan, "run"),
        title=f"{track}: release {the_plan.release.repo_id}@{the_plan.release.revision[:12]}",
        carried=the_plan.carried_diff,
        new_diff=diff_id,
        scores={**scores, **({"champion": outcome.champion_scores} if outcome.champion else {})},
        decision=outcome.decision,
        losses=json.loads((the_plan.work / "loss.json").read_text()) if (the_plan.work / "loss.json").is_file() else [],
    )
    get_run_logger().info("%s: %s", track, "; ".join(outcome.decision.reasons))
    return outcome.decision
