"""Runs that people can tell apart in the Prefect UI, read back from a real Prefect server after a real
watcher pass: recycle runs named TRACK/LABEL and tagged with their track and release, the watcher's run
tagged with its track, artifact keys built from the track and the release's label, the decision headed by
both, and every step's line in its run's logs (also under the demo's quiet console)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.deployments.demo import _quiet_libraries
from graftwork.flows.watch import watch_releases
from graftwork.fs import megabytes
from graftwork.operations.names import artifact_key, release_label
from graftwork.operations.settings import Workspace
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, EvalResult, Promotion, Release
from graftwork.tasks.hub import ReleaseRef
from graftwork.tasks.testbed import Testbed
from tests.flows.conftest import write_track

SHA = "5c81816a" + "0" * 32
STEPS = ("plan:", "fetch:", "carry over:", "fine-tune:", "record:", "diff:", "evaluate ", "gate:", "publish:")


def test_a_release_is_labelled_by_its_folder_or_its_repo_and_ref_at_its_short_sha() -> None:
    local = ReleaseRef(repo_id="local:/data/releases", revision=SHA, ref="04-M4", path=Path("/data/releases/04-M4"))
    assert release_label(local) == "04-M4@5c81816a"
    assert release_label(ReleaseRef(repo_id="meta-llama/Llama-3.1-8B", revision=SHA, ref="main")) == (
        "Llama-3.1-8B:main@5c81816a"
    )
    assert release_label(ReleaseRef(repo_id="acme/bed", revision=SHA)) == "bed@5c81816a"
    assert artifact_key("testbed-demo-04-M4@5c81816a-eval-candidate") == "testbed-demo-04-m4-5c81816a-eval-candidate"
    assert artifact_key("bed:v1.0_rc/é--x-") == "bed-v1-0-rc-x"


@pytest.mark.slow
def test_runs_are_named_tagged_keyed_and_logged_by_track_and_release(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, ["track", "add", str(write_track(tmp_path, testbed, name="readable", releases=(2, 3), steps=5))]
    )
    assert result.exit_code == 0, result.output
    done = watch_releases(track="readable", dispatch="inline")
    assert len(done.started) == 2 and done.failed is None
    APILogHandler().flush()
    first_run, second_run = _expected(data_dir)
    one, two = first_run.label, second_run.label
    assert (one, two) == (f"01-M2@{first_run.revision[:8]}", f"02-M3@{second_run.revision[:8]}")

    with get_client(sync_client=True) as client:
        [watcher] = _runs(client, flow_name="watch-releases", tag="track:readable")
        recycled = _runs(client, flow_name="recycle-then-finetune", tag="track:readable")
        assert (watcher.name, watcher.tags) == ("readable/watch", ["track:readable"])
        assert [(r.name, r.tags) for r in recycled] == [
            (f"readable/{one}", [f"release:{one}", "track:readable"]),
            (f"readable/{two}", [f"release:{two}", "track:readable"]),
        ]
        ids = [r.id for r in recycled]
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        keys = {(a.flow_run_id, a.key) for a in artifacts}
        watcher_log = _messages(client, watcher.id)
        logs = [_messages(client, run_id) for run_id in ids]
        decision = next(a for a in artifacts if a.key == _key(two, "decision")).data

    first, second = ["evals", "decision"], ["evals", "comparison", "decision"]
    assert {k for k in keys if k[1] is not None} == {(ids[0], _key(one, step)) for step in first} | {
        (ids[1], _key(two, step)) for step in second
    }
    # Progress is shown with each run, unkeyed: the Artifacts page (keyed artifacts only) keeps to results.
    ref = two.split("@", 1)[0]
    assert sorted(a.description for a in artifacts if a.type == "progress" and a.flow_run_id == ids[1]) == [
        f"{ref}: base + α·Δ",
        f"{ref}: evaluate base",
        f"{ref}: evaluate candidate",
        f"{ref}: evaluate transferred",
        f"{ref}: fine-tune",
    ]
    assert all(a.key is None for a in artifacts if a.type == "progress")
    assert decision.splitlines()[:4] == [
        f"# readable/{two}",
        f"Release: folder 02-M3, content hash {second_run.revision}",
        "",
        f"**Gate: {second_run.verdict}**",
    ]
    assert [m for m in watcher_log if m.startswith("track readable")] == [
        "track readable: 2 new release(s)",
        f"track readable: runs readable/{one} (release-{first_run.release_id}, attempt 1)",
        f"track readable: runs readable/{two} (release-{second_run.release_id}, attempt 1)",
    ]
    assert [[m for m in log if m.startswith(STEPS)] for log in logs] == [first_run.steps, second_run.steps]


def _runs(client, *, flow_name: str, tag: str) -> list[FlowRun]:  # type: ignore[no-untyped-def]
    found = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
    )
    return sorted(found, key=lambda r: r.name)


def _messages(client, run_id: UUID) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    ]


def _key(label: str, step: str) -> str:
    return artifact_key(f"readable-{label}-{step}")


@dataclass(frozen=True)
class Expected:
    """A release's run as the registry and its working folder say it went: what its name, keys and logs hold."""

    release_id: int
    revision: str
    label: str
    verdict: str
    steps: list[str]


def _expected(data_dir: Path) -> list[Expected]:
    """Each release's run, with the line each of its steps logs, from the registry and the working folders."""
    expected, champion = [], None
    with session_scope(Workspace.from_settings().registry().engine) as session:
        for release in releases.in_order(session, track=rows.get_track(session, name="readable")):
            candidate = session.scalars(select(Candidate).where(Candidate.release_id == release.id)).one()
            diff = session.scalars(select(Diff).where(Diff.candidate_id == candidate.id)).one()
            promotion = session.scalars(select(Promotion).where(Promotion.to_candidate_id == candidate.id)).one()
            source = None if candidate.source_diff_id is None else session.get(Diff, candidate.source_diff_id)
            carried = None if source is None else rows.public_id(source)
            work = (
                data_dir / "runs" / "readable" / release.revision[:12] / ("none" if carried is None else "iterative-a1")
            )
            report = json.loads((work / "finetune.json").read_text())
            curve = report["loss_curve"]
            steps = [
                f"plan: nothing to carry over, none mode ({candidate.carry_reason}); working folder {work}"
                if carried is None
                else f"plan: carry {carried} over, iterative mode ({candidate.carry_reason}); working folder {work}",
                f"fetch: the release is the local folder {release.path}, its files checked against its sha "
                f"{release.revision[:12]}",
                *([] if carried is None else [f"carry over: base + 1·{carried} in {work / 'transferred'}"]),
                f"fine-tune: {len(curve)} steps on {report['device']} × {report['processes']}, loss "
                f"{curve[0][1]:.4f} → {curve[-1][1]:.4f}, {report['tokens']} tokens; "
                f"the candidate is {work / 'candidate'}",
                f"record: candidate-{candidate.id}, with its fine-tune run and spec version 1",
                f"diff: {rows.public_id(diff)} ({'first of its chain' if carried is None else f'parent {carried}'}), "
                f"{megabytes(diff.raw_bytes)} stored as {megabytes(diff.stored_bytes)}",
                *(
                    f"evaluate {subject}: " + _scores(session, release=release, subject=subject)
                    for subject in ("candidate", "base", *(() if carried is None else ("transferred",)))
                ),
                *(
                    []
                    if champion is None
                    else [f"gate: {champion}'s stored evaluation is comparable with the candidate's"]
                ),
                f"gate: {promotion.decision} "
                f"({'no champion before' if champion is None else f'against champion {champion}'}): "
                + "; ".join(promotion.reasons),
            ]
            verdict = "promoted" if promotion.decision == "promote" else "rejected"
            label = f"{release.ref}@{release.revision[:8]}"
            expected.append(Expected(release.id, release.revision, label, verdict, steps))
            champion = rows.public_id(candidate) if promotion.decision == "promote" else champion
    return expected


def _scores(session: Session, *, release: Release, subject: str) -> str:
    query = select(EvalResult).where(EvalResult.release_id == release.id, EvalResult.subject == subject)
    return "; ".join(
        f"{r.task} {r.metric} = {r.value:.4f} (n={r.n})" for r in session.scalars(query.order_by(EvalResult.id))
    )


@flow(log_prints=True)
def _one_step() -> str:
    get_run_logger().info("a step: logged")
    print("a step: printed")
    return str(flow_run.get_id())


def test_the_demos_runs_log_to_their_logs_tab_and_not_to_the_terminal(
    prefect_server: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The demo quiets Prefect's console; its runs' step lines still reach the server (their Logs tabs)."""
    with _quiet_libraries(tmp_path / "demo.log"):
        run_id = _one_step()
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logged = _messages(client, UUID(run_id))
    assert [m for m in logged if m.startswith("a step")] == ["a step: logged", "a step: printed"]
    demo_log = tmp_path / "demo.log"
    assert "a step" not in capfd.readouterr().err and (not demo_log.exists() or "a step" not in demo_log.read_text())
