"""Graftwork as a running service, started the way the README tells a user to: `graft track add`, then `graft
serve --watch-minutes 1` and `graft webhook` with no PREFECT_API_URL anywhere. `graft serve` starts the data dir's
Prefect server (with its scheduler, task-run recorder, event persister and triggers), and everything else finds it.

The schedule alone runs two local releases to their gate decisions, through a `graft serve` killed outright
mid-run and started again; the Prefect API then holds every step of every recycle run as a task run, Graftwork's
events, and an automation that fired on one; a Hub delivery to `graft webhook` starts a watcher run on that same
server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events.actions import DoNothing
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import select

from graftwork.operations.settings import GraftSettings, Workspace
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Promotion
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ReleaseState
from tests.browser import chromium_or_skip, open_browser
from tests.flows.conftest import write_track
from tests.hub_fixtures import hub_payload
from tests.service import Processes, child_env, free_port, runner_of

pytestmark = [pytest.mark.slow, pytest.mark.endtoend]

TRACK = "local"
HUB_TRACK = "hubbed"
SECRET = "service-test-secret-0123456789"
RECYCLE = "recycle-then-finetune/recycle-then-finetune"
# A recycle run's steps, as the Prefect UI names its task runs (the evaluations are one task each).
STEPS = ("plan", "fetch", "carry_over", "fine_tune", "record_candidate", "new_diff", "run_eval", "gate_and_promote")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Processes]:
    home = tmp_path / "user"
    home.mkdir()
    data = tmp_path / "data"
    env = child_env(
        HOME=str(home),
        GRAFT_DATA_DIR=str(data),
        GRAFT_PREFECT_PORT=str(free_port()),  # the one thing a test sets that a user would not: a free port
        GRAFT_WEBHOOK_SECRET=SECRET,
        GRAFT_HEARTBEAT_SECONDS="2",
        GRAFT_RETRY_BACKOFF_SECONDS="0",
    )
    running = Processes(env=env, home=home)
    try:
        yield running
    finally:
        running.stop()


def test_the_schedule_runs_releases_through_a_killed_serve_and_the_api_holds_every_step(
    service: Processes, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium_or_skip()
    for name, value in service.env.items():
        if name.startswith("GRAFT_"):
            monkeypatch.setenv(name, value)
    track = write_track(tmp_path / "tracks", testbed, name=TRACK, releases=(1, 2), steps=10)
    service.graft("track", "add", str(track))
    service.graft("track", "add", str(_hub_track(tmp_path / "tracks", testbed)))
    service.start("serve", "serve", "--watch-minutes", "1")
    url = service.wait("graft serve's server", lambda: _served_at(service.log("serve")), timeout=300)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        automation = _automation_on_evaluations()

        hook = f"http://127.0.0.1:{free_port()}"
        service.start("webhook", "webhook", "--port", hook.rsplit(":", 1)[1])
        service.wait("the webhook receiver", lambda: httpx.get(f"{hook}/healthz").status_code == 200, timeout=120)
        delivery = hub_payload("acme/bed", refs=("refs/tags/r1",))
        answer = httpx.post(f"{hook}/hooks/hub", content=json.dumps(delivery), headers={"X-Webhook-Secret": SECRET})
        assert (answer.status_code, answer.json()["status"]) == (202, "queued"), answer.text
        watcher = service.wait("the hub track's watcher run", lambda: _runs_with(track=HUB_TRACK), timeout=60)
        assert watcher[0].idempotency_key == f"{answer.json()['key']}:{_track_id(HUB_TRACK)}"

        # No `graft track watch`: the watch-all schedule finds the releases. Kill serve (and the run it runs)
        # during the second release's run, as a lost machine would, then start it again.
        runner = service.wait("the second release's run", lambda: runner_of("02-M2"), timeout=600)
        service.kill("serve")
        _kill_quietly(runner)
        service.start("serve", "serve", "--watch-minutes", "1")
        done = {"01-M1": ReleaseState.DONE, "02-M2": ReleaseState.DONE}
        service.wait("both releases decided", lambda: _states(TRACK) == done, timeout=900)

        shas = _shas(TRACK)
        # A release is done once its decision is recorded; its run then reports and ends a moment later.
        recycle = service.wait("the last recycle run to end", _recycle_runs_once_the_last_ended, timeout=120)
        assert [r.idempotency_key for r in recycle] == [
            f"{TRACK}:{shas['01-M1']}:1",
            f"{TRACK}:{shas['02-M2']}:1",
            f"{TRACK}:{shas['02-M2']}:2",
        ], service.tail()
        assert [r.state.type.value if r.state else None for r in recycle][::2] == ["COMPLETED", "COMPLETED"]
        assert _decisions(TRACK) == 2  # one per release: nothing doubled by the killed run or a later pass
        # Every step of each run that finished, as a completed task run (the server's task-run recorder writes them
        # in batches): the first release carries nothing over, and each evaluation (candidate, base, and base + Δ
        # after the first) is one.
        steps = ["fetch", "fine_tune", "gate_and_promote", "new_diff", "plan", "record_candidate"]
        expected = [
            sorted([*steps, "run_eval", "run_eval"]),
            sorted([*steps, "carry_over", "run_eval", "run_eval", "run_eval"]),
        ]
        known = {*steps, "carry_over", "run_eval"}
        service.wait(
            "every step of both runs as a completed task run",
            lambda: [[s for s in _steps(run) if s in known] for run in recycle[::2]] == expected,
            timeout=60,
        )
        # The events come in as the server's event persister writes them, in batches of a few seconds.
        releases = sorted(sha[:12] for sha in shas.values())
        evaluated = service.wait(
            "an evaluation event of each release",
            lambda: sorted(e["payload"]["release"] for e in _events(url, "graftwork.candidate.evaluated")) == releases,
            timeout=60,
        )
        assert evaluated
        decisions = {"graftwork.candidate.promoted", "graftwork.candidate.rejected"}
        service.wait(
            "a decision event of each release",
            lambda: len([e for e in _events(url, "graftwork.candidate.*") if e["event"] in decisions]) == 2,
            timeout=60,
        )
        fired = service.wait("the automation", lambda: _events(url, "prefect.automation.action.executed"), timeout=120)
        assert any(e["resource"]["prefect.resource.id"] == f"prefect.automation.{automation}" for e in fired), fired
        _the_ui_shows(url.removesuffix("/api"), recycle[2], steps=expected[1])


def _the_ui_shows(ui: str, run: FlowRun, *, steps: list[str]) -> None:
    """The run's page in the Prefect UI, in Chromium, as a person opens it: its task runs, then its artifacts
    with the gate's decision."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    names = [t.name for t in tasks if t.name.rsplit("-", 1)[0] in steps]
    decision = next(a.key for a in artifacts if a.key and a.key.endswith("-decision"))
    with open_browser() as browser:
        runs = browser.render(f"{ui}/v2/runs/flow-run/{run.id}?tab=TaskRuns", wait_for=names, scroll=True)
        shown = browser.render(f"{ui}/v2/runs/flow-run/{run.id}?tab=Artifacts", wait_for=[decision], scroll=True)
    assert run.name in runs.text and f"{len(tasks)} Task runs" in runs.text, runs.text
    assert f"MARKDOWN\n\n{decision}" in shown.text, shown.text


def _hub_track(folder: Path, testbed: Testbed) -> Path:
    spec = {
        "name": HUB_TRACK,
        "source": {"kind": "hub-refs", "repo": "acme/bed", "ref_pattern": "r*"},
        "finetune": {"data": str(testbed.train_data), "recipe": {"steps": 10, "seed": 0}},
        "eval": {"tasks": [testbed.generate_task], "task_dirs": [str(testbed.task_dir)], "limit": 10},
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}]},
    }
    path = folder / f"{HUB_TRACK}.yaml"
    path.write_text(json.dumps(spec))
    return path


def _served_at(log: str) -> str | None:
    """The API URL `graft serve` printed, once it serves."""
    if " deployments: " not in log:
        return None
    line = next(line for line in log.splitlines() if line.startswith("Prefect UI: "))
    return line.split("(API ", 1)[1].split(")", 1)[0]


def _automation_on_evaluations() -> str:
    trigger = EventTrigger(expect={"graftwork.candidate.evaluated"}, posture=Posture.Reactive, threshold=1)
    with get_client(sync_client=True) as client:
        made = client.create_automation(AutomationCore(name="on-evaluated", trigger=trigger, actions=[DoNothing()]))
    return str(made)


def _registry_session() -> Any:
    return session_scope(Workspace.from_settings(GraftSettings()).registry().engine)


def _track_id(name: str) -> int:
    with _registry_session() as session:
        return rows.get_track(session, name=name).id


def _states(track: str) -> dict[str, ReleaseState]:
    with _registry_session() as session:
        found = rows.get_track(session, name=track)
        return {r.ref or "": releases.status(session, release=r).state for r in releases.in_order(session, track=found)}


def _shas(track: str) -> dict[str, str]:
    with _registry_session() as session:
        found = rows.get_track(session, name=track)
        return {r.ref or "": r.revision for r in releases.in_order(session, track=found)}


def _decisions(track: str) -> int:
    with _registry_session() as session:
        found = rows.get_track(session, name=track)
        return len(session.scalars(select(Promotion).where(Promotion.track_id == found.id)).all())


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _runs_with(*, track: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs() if r.parameters.get("track") == track and r.name.endswith("/watch")]


def _recycle_runs() -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(RECYCLE)
        runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]
    return sorted(runs, key=lambda r: r.created or 0)


def _recycle_runs_once_the_last_ended() -> list[FlowRun] | None:
    runs = _recycle_runs()
    return runs if runs and runs[-1].state is not None and runs[-1].state.is_final() else None


def _steps(run: FlowRun) -> list[str]:
    """The completed task runs of `run`, by task name, sorted."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return sorted(t.name.rsplit("-", 1)[0] for t in tasks if t.state is not None and t.state.is_completed())


def _events(url: str, name: str) -> list[dict[str, Any]]:
    """The events named `name` (or starting with it, for `prefix.*`) the server has stored."""
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    names = {"prefix": [name.removesuffix("*")]} if name.endswith("*") else {"name": [name]}
    body = {"filter": {"event": names, "occurred": {"since": since}}, "limit": 50}
    page = httpx.post(f"{url}/events/filter", json=body, timeout=30)
    page.raise_for_status()
    return list(page.json()["events"])
