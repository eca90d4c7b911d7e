"""The `deployment` dispatch path against a real Prefect server: the webhook receiver starts the watcher
deployment once per delivery, the watcher starts the recycle deployment once per release with the
idempotency key TRACK:SHA:ATTEMPT, and a deployment that does not exist is said so in words.

The deployments are registered without a runner, so their runs stay scheduled: what is shown is what
`run_deployment` asked the server for. `test_release_path.py` runs them, end to end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

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
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ReleaseState
from tests.flows.conftest import write_track
from tests.hub_fixtures import hub_payload

SECRET = "dispatch-test-secret-0123456789"


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
    hook = create_app(registry=Workspace.from_settings().registry(), secret=SECRET)
    with TestClient(hook) as client:
        missing = client.post("/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET})
        assert missing.status_code == 503
        assert missing.json()["detail"] == (
            "could not start the run of track hubbed for acme/bed: the deployment watch-releases/watch-releases "
            "does not exist: serve it (`graft serve`) or deploy deployments/prefect.yaml (`prefect deploy --all`). "
            "Nothing was recorded; fix the cause and redeliver the webhook from the Hub."
        )

        watch_releases.to_deployment(name="watch-releases").apply()
        registered.append("watch-releases/watch-releases")
        sent = [
            client.post("/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET})
            for _ in range(3)
        ]
    assert [r.json()["status"] for r in sent] == ["started", "duplicate", "duplicate"]
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
