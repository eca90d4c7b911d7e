"""The `deployment` dispatch path against a real Prefect server: the webhook receiver's outbox starts the watcher
deployment once per delivery (trying again until the deployment exists), the watcher starts the recycle
deployment once per release with the idempotency key TRACK:SHA:ATTEMPT, and a deployment that does not exist is
said so in words.

The deployments are registered without a runner, so their runs stay scheduled: what is shown is what
`run_deployment` asked the server for. `test_release_path.py` runs them, end to end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.deployments.hub_events import HubEvent, delivery_key
from graftwork.deployments.serve import recycle_deployment
from graftwork.deployments.webhook import create_app
from graftwork.flows.watch import watch_releases
from graftwork.operations.settings import Workspace
from graftwork.storage import Registry, deliveries, releases
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ReleaseState
from tests.flows.conftest import write_track
from tests.hub_fixtures import hub_payload

SECRET = "dispatch-test-secret-0123456789"
T = TypeVar("T")


def _graft(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def registered(prefect_server: None) -> Iterator[list[str]]:
    """Register deployments by name (appended by the test); delete them afterwards, so that other tests on
    this session's server see none."""
    names: list[str] = []
    yield names
    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_deployment(client.read_deployment_by_name(name).id)


def _backlog(registry: Registry) -> deliveries.Backlog:
    with session_scope(registry.engine) as session:
        return deliveries.backlog(session)


def _wait(ready: Callable[[], T | None], *, timeout: float = 60) -> T:
    """Poll `ready` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert time.monotonic() < deadline, "the outbox did not get there in time"
        time.sleep(0.1)
    return value


def _runs_of(deployment: str) -> list[FlowRun]:
    flow_name, name = deployment.split("/")
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
        )
        ids = [d.id for d in deployments if client.read_flow(d.flow_id).name == flow_name]
        return [run for run in client.read_flow_runs() if run.deployment_id in ids]


def test_a_webhook_delivery_starts_the_watcher_deployment_once(
    data_dir: Path, testbed: Testbed, tmp_path: Path, registered: list[str]
) -> None:
    spec = yaml.safe_load(write_track(tmp_path, testbed, name="hubbed", releases=(2,)).read_text())
    spec["source"] = {"kind": "hub-refs", "repo": "acme/bed", "ref_pattern": "r*"}
    path = tmp_path / "hubbed-hub.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert _graft("track", "add", str(path)).startswith("added track hubbed")
    payload = hub_payload("acme/bed", refs=("refs/tags/r1",))
    registry = Workspace.from_settings().registry()
    hook = create_app(registry=registry, secret=SECRET, poll_s=0.2)
    with TestClient(hook) as client:
        first = client.post("/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET})
        assert (first.status_code, first.json()["status"]) == (202, "queued")
        failing = _wait(lambda: _backlog(registry) if _backlog(registry).failing else None)
        assert failing.last_error == (
            "the deployment watch-releases/watch-releases does not exist: serve it (`graft serve`) or deploy "
            "deployments/prefect.yaml (`prefect deploy --all`)"
        )

        watch_releases.to_deployment(name="watch-releases").apply()
        registered.append("watch-releases/watch-releases")
        _wait(lambda: _backlog(registry).waiting == 0)
        again = [
            client.post("/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET})
            for _ in range(2)
        ]
    assert [r.json()["status"] for r in again] == ["duplicate", "duplicate"]
    with session_scope(Workspace.from_settings().registry().engine) as session:
        track_id = rows.get_track(session, name="hubbed").id
    (run,) = _runs_of("watch-releases/watch-releases")
    key = delivery_key(HubEvent.from_payload(payload))
    assert (run.idempotency_key, run.parameters) == (f"{key}:{track_id}", {"track": "hubbed", "dispatch": "deployment"})


def test_the_watcher_starts_one_recycle_run_per_release_with_its_idempotency_key(
    data_dir: Path, testbed: Testbed, tmp_path: Path, registered: list[str]
) -> None:
    assert _graft("track", "add", str(write_track(tmp_path, testbed, name="sent", releases=(2, 3)))).startswith(
        "added track sent"
    )
    recycle_deployment().apply()
    registered.append("recycle-then-finetune/recycle-then-finetune")

    first = watch_releases(track="sent", dispatch="deployment")
    again = watch_releases(track="sent", dispatch="deployment")
    assert (len(first.new), len(first.started), first.failed) == (2, 1, None)
    assert again.new == again.started == [] and again.failed is None
    (run,) = _runs_of("recycle-then-finetune/recycle-then-finetune")
    with session_scope(Workspace.from_settings().registry().engine) as session:
        one, two = releases.in_order(session, track=rows.get_track(session, name="sent"))
        status = releases.status(session, release=one)
        assert (status.state, status.flow_run_id) == (ReleaseState.DISPATCHED, str(run.id))
        assert releases.status(session, release=two).state is ReleaseState.DISCOVERED
        assert again.waiting == f"{releases.label(one)} is dispatched"
        assert run.idempotency_key == f"sent:{one.revision}:1"
        assert run.parameters == {"track": "sent", "release_id": one.id, "chain": True}
        assert set(run.tags) == {"graftwork", "track:sent", f"release:01-M2@{one.revision[:8]}"}
        assert run.name == f"sent/01-M2@{one.revision[:8]}"  # named while it waits for a worker
