"""The webhook receiver's outbox: failed starts are tried again with back-off, two drainers start each delivery
once, and `graft webhook` killed between recording deliveries and starting their runs, or in the middle of
starting them, starts each run exactly once when it is started again (a real Prefect server counts the runs).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.settings import PREFECT_API_URL

from graftwork.deployments.deliveries import record_deliveries, start_watcher
from graftwork.deployments.hub_events import HubEvent
from graftwork.deployments.outbox import backoff, drain
from graftwork.flows.watch import watch_releases
from graftwork.storage import Registry, deliveries
from graftwork.storage.db import session_scope
from tests.hub_fixtures import hub_payload
from tests.registry.hooks import OLMO, SECRET, Starts, recorded, watch_tracks
from tests.service import Processes, child_env, free_port

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def watched(registry: Registry) -> Registry:
    return watch_tracks(registry)


def deliver(registry: Registry, count: int, *, first: int = 0) -> None:
    """Record `count` distinct deliveries for the track olmo-stage1, as the receiver does."""
    for i in range(first, first + count):
        payload = hub_payload(OLMO, refs=(f"refs/heads/stage1-step{i}-tokens{i}B",))
        [outcome] = record_deliveries(registry, events=[HubEvent.from_payload(payload)])
        assert outcome.status == "queued"


def test_a_failed_start_is_tried_again_after_a_growing_wait_and_recorded(watched: Registry) -> None:
    deliver(watched, 1)
    starts = Starts(failures=3)
    clock = [T0]
    tries = []
    for seconds in (0, 0, 1, 1, 3, 7):  # at T0 + seconds
        clock[0] = T0 + timedelta(seconds=seconds)
        done = drain(watched, start_run=starts, now=lambda: clock[0])
        tries.append((seconds, done.started, done.failed))
    assert tries == [(0, 0, 1), (0, 0, 0), (1, 0, 1), (1, 0, 0), (3, 0, 1), (7, 1, 0)]
    [row] = recorded(watched)
    assert (row.attempts, row.flow_run_id, row.started_at, row.retry_at) == (
        3,
        "run-1",
        T0 + timedelta(seconds=7),
        None,
    )
    assert row.last_error == "ConnectionError: the Prefect API at http://127.0.0.1:4200/api is unreachable"
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 9, 10, 50)] == [1, 2, 4, 256, 300, 300]


def test_two_drainers_start_each_delivery_once(watched: Registry) -> None:
    deliver(watched, 60)
    starts = Starts()
    drainers = [threading.Thread(target=drain, args=(watched,), kwargs={"start_run": starts}) for _ in range(2)]
    for drainer in drainers:
        drainer.start()
    for drainer in drainers:
        drainer.join()
    keys = [key for _, key in starts.calls]
    assert len(keys) == len(set(keys)) == 60
    with session_scope(watched.engine) as session:
        assert deliveries.backlog(session) == deliveries.Backlog(waiting=0, failing=0, last_error=None)


@pytest.fixture
def deployment(prefect_server: None) -> Iterator[list[str]]:
    """The watcher deployment's id once the test registers it (no runner: its runs stay scheduled); deleted
    afterwards, so that other tests on this session's server see none."""
    made: list[str] = []
    yield made
    with get_client(sync_client=True) as client:
        for deployment_id in made:
            client.delete_deployment(deployment_id)


def test_a_receiver_killed_before_or_while_starting_runs_starts_each_exactly_once(
    watched: Registry, deployment: list[str], tmp_path: Path
) -> None:
    url = watched.engine.url.render_as_string(hide_password=False)
    env = child_env(
        GRAFT_DATA_DIR=str(tmp_path / "data"),
        GRAFT_DATABASE_URL=url,
        GRAFT_WEBHOOK_SECRET=SECRET,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
    )
    port = free_port()
    hook = f"http://127.0.0.1:{port}"
    services = Processes(env=env, home=tmp_path)

    def receiver() -> None:
        services.start("webhook", "webhook", "--port", str(port))
        services.wait("the receiver", lambda: httpx.get(f"{hook}/healthz", timeout=5).status_code == 200, timeout=120)

    def send(first: int, count: int) -> list[int]:
        payloads = [
            hub_payload(OLMO, refs=(f"refs/heads/stage1-step{i}-tokens{i}B",)) for i in range(first, first + count)
        ]
        headers = {"X-Webhook-Secret": SECRET}
        return [
            httpx.post(f"{hook}/hooks/hub", content=json.dumps(p), headers=headers, timeout=30).status_code
            for p in payloads
        ]

    def backlog() -> deliveries.Backlog:
        with session_scope(watched.engine) as session:
            return deliveries.backlog(session)

    try:
        receiver()  # no watcher deployment yet: every start fails and waits for its next try
        assert send(0, 10) == [202] * 10
        services.wait("ten failed tries", lambda: backlog().failing == 10, timeout=60)
        services.kill("webhook")
        deployment.append(str(watch_releases.to_deployment(name="watch-releases").apply()))
        receiver()  # starts the ten left waiting
        services.wait("the ten runs", lambda: backlog().waiting == 0, timeout=120)
        assert send(10, 20) == [202] * 20
        services.kill("webhook")  # while it starts them
        killed_with = backlog().waiting
        receiver()
        services.wait("all runs", lambda: backlog().waiting == 0, timeout=120)
    finally:
        services.stop()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment[0]]))
        )
    rows = recorded(watched)
    assert len(rows) == 30 and killed_with > 0
    assert sorted(run.idempotency_key for run in runs) == sorted(row.key for row in rows)  # one run each
    assert {row.key: row.flow_run_id for row in rows} == {run.idempotency_key: str(run.id) for run in runs}
    log = services.log("webhook")
    assert "does not exist: serve it (`graft serve`)" in log and f"started run {rows[0].flow_run_id}" in log
    # A receiver killed after Prefect started a run and before the row said so starts it again: the same run.
    assert start_watcher("olmo-stage1", rows[-1].key) == rows[-1].flow_run_id
