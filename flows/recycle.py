"""Algorithm 1 as a Prefect flow: for one release of a track, carry the track's fine-tuning over,
fine-tune, register the new Δ, evaluate, gate and promote.

The flow reads the settings once and hands each step what it needs; steps hand each other paths and
ids only, and their database work is named registry operations (`storage.runs`). Each step leaves its
result in the run's working folder (`DATA_DIR/runs/TRACK/SHA[:12]/`, written atomically) or in the
registry, and finds it there when the run is started again, so a crashed run resumes after its last
completed step.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from ..fs import file_sha256, megabytes, write_text_atomic
from ..operations.awaiting import await_approval
from ..operations.diffs import register_diff, streamed_diff
from ..operations.lifecycle import check_files, release_run, start_next_pass
from ..operations.names import release_ref, run_name, run_tags, step_key, tag_this_run
from ..operations.progress import progress_artifact
from ..operations.report import report_run
from ..operations.settings import Workspace, child_environment
from ..operations.shipped import accelerate_config
from ..operations.tracks import load_spec
from ..storage import registry as rows
from ..storage import runs
from ..storage.db import session_scope
from ..tasks import engine
from ..tasks.evaluate import EvalRecord, Evaluation, run_evaluation
from ..tasks.gate import Decision
from ..tasks.hub import ReleaseRef, download
from ..tasks.starts.choice import StartRecord
from ..tasks.track import TrackSpec, spec_digest
from ..tasks.training.finetune import finetune
from ..tasks.training.gpus import GpuLease, gpu_lease
from ..tasks.training.launch import run_launch
from ..tasks.training.report import FINETUNE_REPORT, FinetuneReport
from ..tasks.training.trained import train_with_command
from ..terms import EvalSubject, RecycleMode, Verdict
from .autostart import choose_start
from .gating import champion_evaluation, gate_and_promote, publish_champion


@dataclass(frozen=True)
class Plan:
    """What one recycle run works on: the release, the Δ it carries over, and its working folder."""

    track: str
    release_id: int
    release: ReleaseRef
    carried_diff: str | None
    carry_reason: str
    mode: RecycleMode | None
    """Which Δ Algorithm 1 carries (None: a backport, which is no mode of it)."""
    work: Path
    alpha: float = 1.0
    """The α the start is made with: base + α·Δ."""

    @property
    def label(self) -> str:
        """How the release is named to people: its branch, tag or folder, else its short sha."""
        return self.release.ref or self.release.revision[:12]

    def key(self, step: str) -> str:
        """The artifact key of one of the run's steps (`names.step_key`)."""
        return step_key(track=self.track, release=self.release, step=step)


@task
def plan(where: Workspace, track: str, release_id: int, spec: TrackSpec, mode: RecycleMode | None) -> Plan:
    """Pick the Δ to carry over by the track's mode and carry rule (`storage.runs.carry`), and the run's
    working folder: one per release, mode and α, so that runs of one release in two modes share nothing.

    Raises:
        ReleaseOrderError: the release this one carries from is not done.
    """
    mode = mode or spec.recycle.mode
    auto = mode is RecycleMode.AUTO  # it carries Δ^iter or Δ^source, or nothing: `choose_start` decides
    with session_scope(where.registry().engine) as session:
        release = rows.get_release(session, release_id=release_id)
        carried = runs.carry(
            session,
            release=release,
            mode=RecycleMode.ITERATIVE if auto else mode,
            rule=spec.recycle.carry,
            channel=spec.channel,
        )
        carried_id = None if carried.diff is None else rows.public_id(carried.diff)
        ref = release_ref(release)
    effective = mode if carried_id else RecycleMode.NONE
    folder = effective.value if carried_id is None or auto else f"{effective}-a{spec.recycle.alpha:g}"
    work = where.data_dir / "runs" / track / ref.revision[:12] / folder
    if auto and carried_id:
        get_run_logger().info("plan: auto mode: pre-check, then probe the starts; working folder %s", work)
        return Plan(track, release_id, ref, None, carried.reason, effective, work)
    carries = "nothing to carry over" if carried_id is None else f"carry {carried_id} over"
    get_run_logger().info("plan: %s, %s mode (%s); working folder %s", carries, effective, carried.reason, work)
    return Plan(track, release_id, ref, carried_id, carried.reason, effective, work, spec.recycle.alpha)


@task
def fetch(where: Workspace, the_plan: Plan) -> Path:
    """The release's model folder: its local path, its files checked to be those the release was recorded with
    (`lifecycle.check_files`), or a download pinned to its sha (its progress artifact goes from 0 to 100 % when
    the download completes)."""
    release = the_plan.release
    if release.path is not None:
        check_files(where, release_id=the_plan.release_id, release=release)
        get_run_logger().info(
            "fetch: the release is the local folder %s, its files checked against its sha %s",
            release.path,
            release.revision[:12],
        )
        return release.path
    with progress_artifact(description=f"download {release}") as report:
        folder = download(release=release)
        report(1, 1)
    get_run_logger().info("fetch: %s is in %s", release, folder)
    return folder


@task
def carry_over(where: Workspace, the_plan: Plan, base: Path) -> Path:
    """base + α·Δ (the plan's α), with Δ streamed from the registry (one shard on scratch disk at a time)."""
    out = the_plan.work / "transferred"
    if out.is_dir():
        get_run_logger().info("carry over: done by an earlier attempt: %s", out)
        return out
    assert the_plan.carried_diff is not None
    what = f"{the_plan.label}: base + α·Δ"
    with (
        streamed_diff(where.registry(), ref=the_plan.carried_diff, scratch=the_plan.work / "carried-diff") as (
            diff,
            reader,
        ),
        progress_artifact(description=what) as report,
    ):
        engine.apply(diff=diff, reader=reader, target=base, out=out, alpha=the_plan.alpha, progress=report)
    get_run_logger().info("carry over: base + %g·%s in %s", the_plan.alpha, the_plan.carried_diff, out)
    return out


@task
def fine_tune(the_plan: Plan, start: Path, spec: TrackSpec, lease: GpuLease) -> Path:
    """The track's recipe on `start`, on the leased GPUs: in this process on a CPU worker (with a progress
    artifact), else in a child process that sees only those GPUs (`CUDA_VISIBLE_DEVICES`; in-process, the
    Trainer would take GPU 0 and every other visible GPU with it), under `accelerate launch` when the track asks
    for several processes. A track's own training command runs in a child process on those GPUs too, its output
    in the run's log. The run's report (loss curve, tokens, device) is kept beside the candidate."""
    out, report = the_plan.work / "candidate", the_plan.work / FINETUNE_REPORT
    if out.is_dir() and report.is_file():
        get_run_logger().info("fine-tune: done by an earlier attempt: %s", out)
        return out
    _fine_tune(the_plan, start, spec, lease, out=out, report=report)
    done = FinetuneReport.read(report)
    curve = done.loss_curve
    loss = f"loss {curve[0][1]:.4f} → {curve[-1][1]:.4f}" if curve else "no steps"
    get_run_logger().info(
        "fine-tune: %d steps on %s × %d, %s, %d tokens; the candidate is %s",
        curve[-1][0] if curve else 0, done.device, done.processes, loss, done.tokens, out,
    )  # fmt: skip
    return out


def _fine_tune(the_plan: Plan, start: Path, spec: TrackSpec, lease: GpuLease, *, out: Path, report: Path) -> None:
    launch = spec.finetune.launch
    if spec.finetune.command is not None:
        logger = get_run_logger()
        done = train_with_command(
            command=spec.finetune.command, start=start, data=spec.finetune.data, processes=launch.processes,
            work=the_plan.work, env=child_environment(**lease.env()), device=lease.describe(), out=out,
            on_line=lambda stream, line: (logger.warning if stream == "stderr" else logger.info)("trainer: %s", line),
        )  # fmt: skip
        done.write(report)
        return
    if launch.processes == 1 and not lease.names:
        with progress_artifact(description=f"{the_plan.label}: fine-tune") as progress:
            result = finetune(
                model_dir=start,
                data=spec.finetune.data,
                recipe=spec.finetune.recipe,
                out_dir=out,
                overwrite=True,
                progress=progress,
            )
        result.report().write(report)
        return
    if launch.processes > 1 and launch.config is None:
        launch = launch.model_copy(update={"config": accelerate_config(launch.distributed)})
    recipe = the_plan.work / "recipe.json"
    write_text_atomic(recipe, spec.finetune.recipe.model_dump_json())
    run_launch(
        launch=launch, model_dir=start, data=spec.finetune.data, recipe_json=recipe, out_dir=out, overwrite=True,
        report=report, env=child_environment(**lease.env()),
    )  # fmt: skip


@task
def record_candidate(
    where: Workspace, the_plan: Plan, spec: TrackSpec, candidate: Path, start_choice: StartRecord | None = None
) -> int:
    """Record the candidate and the fine-tune run that made it (its loss curve as a blob), and for an `auto`
    track how its start was chosen, once the release's files are checked to be still those its sha names; return
    its id. Recording it again (a resumed run) returns the same id."""
    check_files(where, release_id=the_plan.release_id, release=the_plan.release)
    report = FinetuneReport.read(the_plan.work / FINETUNE_REPORT)
    registry = where.registry()
    curve = json.dumps(report.loss_curve).encode()
    with registry.store.writing():  # gc keeps the curve's blob until the row owning it is committed
        blob = registry.store.put(io.BytesIO(curve)).name if report.loss_curve else None
        recipe, command = spec.finetune.recipe, spec.finetune.command
        run = runs.FinetuneRecord(
            recipe={"command": command.model_dump(mode="json")} if command else recipe.recorded(),
            steps=(report.loss_curve[-1][0] if report.loss_curve else 0) if command else recipe.total_steps,
            device=report.device,
            processes=report.processes,
            tokens=report.tokens,
            tokens_per_second=report.tokens_per_second,
            final_loss=report.final_loss,
            loss_curve_blob=blob,
            started_at=report.started_at,
            finished_at=report.finished_at,
            data_sha256=file_sha256(spec.finetune.data) if spec.finetune.data.is_file() else None,
        )
        with session_scope(registry.engine) as session:
            source = None if the_plan.carried_diff is None else rows.get_diff(session, ref=the_plan.carried_diff)
            release = rows.get_release(session, release_id=the_plan.release_id)
            version = rows.spec_version(
                session, track=release.track, spec=spec.model_dump(mode="json"), digest=spec_digest(spec)
            )
            row = runs.record_candidate(
                session,
                release=release,
                mode=the_plan.mode,
                alpha=0.0 if source is None else the_plan.alpha,
                model_uri=str(candidate),
                source_diff=source,
                finetune=run,
                carry_reason=the_plan.carry_reason,
                spec=version,
                start_choice=None if start_choice is None else start_choice.model_dump(mode="json"),
            )
            candidate_id, number = row.id, version.version
    get_run_logger().info("record: candidate-%d, with its fine-tune run and spec version %d", candidate_id, number)
    return candidate_id


@task
def new_diff(where: Workspace, the_plan: Plan, candidate: Path, base: Path, candidate_id: int) -> str:
    """Δ_i = M*_i − M_i, registered with the Δ it was carried from as its parent, once the release's files are
    checked to be still those its sha names."""
    out = the_plan.work / "diff"
    if not out.is_dir():
        engine.diff(finetuned=candidate, base=base, out=out)
    check_files(where, release_id=the_plan.release_id, release=the_plan.release)
    done = register_diff(
        where.registry(),
        diff_dir=out,
        track=the_plan.track,
        parent=the_plan.carried_diff,
        candidate_id=candidate_id,
        base_release_id=the_plan.release_id,
    )
    parent = f"parent {the_plan.carried_diff}" if the_plan.carried_diff else "first of its chain"
    get_run_logger().info(
        "diff: %s (%s), %s stored as %s", done.id, parent, megabytes(done.raw_bytes), megabytes(done.stored_bytes)
    )
    return done.id


@task
def run_eval(the_plan: Plan, subject: EvalSubject, model: Path, spec: TrackSpec, lease: GpuLease) -> Evaluation:
    """The track's eval suite on one model folder, on the leased GPU, with its per-sample scores (kept in
    the working folder once done)."""
    saved = the_plan.work / "evals" / f"{subject}.json"
    if saved.is_file():
        done = Evaluation.model_validate_json(saved.read_text())
        get_run_logger().info("evaluate %s (done by an earlier attempt): %s", subject, scores_line(done.records))
        return done
    what = f"{the_plan.label}: evaluate {subject}"
    lease.pin()
    with progress_artifact(description=what) as report:
        done = run_evaluation(model_dir=model, suite=spec.eval, progress=report)
    write_text_atomic(saved, done.model_dump_json())
    get_run_logger().info("evaluate %s: %s", subject, scores_line(done.records))
    return done


def scores_line(records: list[EvalRecord]) -> str:
    """Eval records on one line: `testbed_add exact_match = 0.4500 (n=40)`."""
    return "; ".join(f"{r.task} {r.metric} = {r.value:.4f} (n={r.n})" for r in records) or "no scores"


def _run_name() -> str:
    """The run's name, `TRACK/LABEL` (`names.run_name`), its release looked up by id in the registry.

    Raises:
        NotFoundError: the run's release is not in the registry.
        DatabaseError: the registry cannot be reached.
    """
    parameters = flow_run.parameters
    with session_scope(Workspace.at(parameters.get("data_dir")).registry().engine) as session:
        release = release_ref(rows.get_release(session, release_id=parameters["release_id"]))
    return run_name(track=parameters["track"], release=release)


@flow(name="recycle-then-finetune", flow_run_name=_run_name, log_prints=True)
def recycle_then_finetune(
    track: str, release_id: int, mode: RecycleMode | None = None, data_dir: Path | None = None, chain: bool = False
) -> Decision:
    """One step of Algorithm 1 for one release of a track: M*_i = FT(M_i + α·Δ_{i−1}).

    `mode` overrides the track's recycle mode for this run; `data_dir` replaces the settings' data dir;
    `chain` starts the track's next watcher pass when the run is done (the watcher's deployment runs do).
    The release is `running` meanwhile, then `done` or `failed` (`operations.lifecycle`). The run is named and
    tagged by its track and release (`operations.names`), and logs each step.
    """
    where = Workspace.at(data_dir)
    spec = load_spec(where.registry(), track=track)
    with release_run(where, release_id=release_id):
        decision, sha, candidate_id = _recycle(where, track, release_id, spec, mode)
    if chain:
        start_next_pass(track=track, after=sha)
    if decision.verdict is Verdict.WAIT:
        decision = await_approval(where.registry(), spec=spec, candidate_id=candidate_id, reasons=decision.reasons)
    return decision


def _recycle(
    where: Workspace, track: str, release_id: int, spec: TrackSpec, mode: RecycleMode | None
) -> tuple[Decision, str, int]:
    the_plan = plan(where, track, release_id, spec, mode)
    tag_this_run(*run_tags(track=track, release=the_plan.release))
    base = fetch(where, the_plan)
    choice = None
    if the_plan.mode is RecycleMode.AUTO:
        choice = choose_start(
            where, work=the_plan.work, release_id=release_id, base=base, spec=spec, key=the_plan.key("start")
        )
        the_plan = replace(
            the_plan,
            carried_diff=choice.carried_diff,
            carry_reason=choice.carry_reason,
            mode=choice.mode,
            alpha=choice.alpha,
        )
        start = choice.start
    else:
        start = base if the_plan.carried_diff is None else carry_over(where, the_plan, base)
    with gpu_lease(count=spec.finetune.launch.processes, gpus=where.gpus()) as lease:
        candidate = fine_tune(the_plan, start, spec, lease)
    candidate_id = record_candidate(where, the_plan, spec, candidate, None if choice is None else choice.record)
    diff_id = new_diff(where, the_plan, candidate, base, candidate_id)
    with gpu_lease(count=1, gpus=where.gpus()) as lease:
        scores = {
            EvalSubject.CANDIDATE: run_eval(the_plan, EvalSubject.CANDIDATE, candidate, spec, lease),
            EvalSubject.BASE: run_eval(the_plan, EvalSubject.BASE, base, spec, lease),
        }
        if the_plan.carried_diff is not None:
            scores[EvalSubject.TRANSFERRED] = run_eval(the_plan, EvalSubject.TRANSFERRED, start, spec, lease)
        evidence = champion_evaluation(where, spec, candidate_id, scores[EvalSubject.CANDIDATE], the_plan.work, lease)
    outcome = gate_and_promote(where, spec, candidate_id, scores, evidence, the_plan.key("comparison"))
    if outcome.decision.promote and spec.publish is not None:
        publish_champion(spec, candidate, release=the_plan.release.revision[:12])
    held = outcome.champion_evaluation
    champion = {EvalSubject.CHAMPION: held.records} if held is not None else {}
    report_run(
        track=track,
        release=the_plan.release,
        carried=the_plan.carried_diff,
        carry_reason=the_plan.carry_reason,
        new_diff=diff_id,
        scores={**{subject: e.records for subject, e in scores.items()}, **champion},
        decision=outcome.decision,
        losses=FinetuneReport.read(the_plan.work / FINETUNE_REPORT).loss_curve,
    )
    return outcome.decision, the_plan.release.revision, candidate_id


@flow(name="run-series", flow_run_name="{track}/series", log_prints=True)
def run_series(
    track: str, releases: list[int], modes: list[RecycleMode] | None = None, data_dir: Path | None = None
) -> list[bool]:
    """Backfill: Algorithm 1 over a list of a track's release ids, in order (one mode per release, or the
    track's mode for all)."""
    return [
        recycle_then_finetune(
            track=track, release_id=release_id, mode=None if modes is None else modes[i], data_dir=data_dir
        ).promote
        for i, release_id in enumerate(releases)
    ]
