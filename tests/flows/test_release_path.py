"""The release path end to end, as a team runs it: a Prefect server, `graft serve --recycle-pool gpu`, a
`graft worker --pool gpu` and `graft webhook`, each its own process on 127.0.0.1, over a Hub (olah)
whose repo `acme/bed` tags three releases of the test bed (r1, r2, r3).

One delivery naming the three tags starts one watcher run; the watcher dispatches r1's recycle run through
the deployment (idempotency key TRACK:SHA:ATTEMPT), and each finished run starts the next pass, which
dispatches the next release. The worker is killed (with its run) while r2 runs; a worker is started again,
and the next watcher pass finds r2's run dead, marks its flow run crashed and dispatches r2 again, which
finishes and chains to r3. A replayed delivery and a pass after the end start nothing. The registry
ends with one candidate and one decision per release, r2 carrying r1's Δ and r3 carrying r2's.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from sqlalchemy import select
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.operations.settings import Workspace
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, Promotion, Release, WebhookDelivery
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ReleaseState
from tests.hub_fixtures import OlahServer, commit_all, copy_model, git, hub_payload, init_repo
from tests.service import Processes, free_port, own_prefect, runner_of

pytestmark = [pytest.mark.slow, pytest.mark.endtoend, pytest.mark.hub]
pytest.importorskip("olah", reason="olah (a dev extra) serves the test Hub: pip install -e '.[dev]'")

SECRET = "release-path-secret-0123456789"
TRACK = "bed"
RECYCLE = "recycle-then-finetune/recycle-then-finetune"
WATCH = "watch-releases/watch-releases"


def _mirror(root: Path, testbed: Testbed) -> list[str]:
    """acme/bed, one dated commit per test bed release M1..M3, tagged r1..r3; returns the shas."""
    repo = root / "models" / "acme" / "bed"
    init_repo(repo)
    shas = []
    for i in (1, 2, 3):
        copy_model(testbed.releases[i - 1], repo)
        shas.append(commit_all(repo, f"release {i}", at=datetime(2026, 1, i, tzinfo=UTC)))
        git(repo, "tag", f"r{i}")
    return shas


def _track(folder: Path, testbed: Testbed) -> Path:
    spec = {
        "name": TRACK,
        "source": {"kind": "hub-refs", "repo": "acme/bed", "ref_pattern": "r*"},
        "finetune": {"data": str(testbed.train_data), "recipe": {"steps": 10, "seed": 0}},
        "recycle": {"mode": "iterative", "alpha": 1.0},
        "eval": {"tasks": [testbed.generate_task], "task_dirs": [str(testbed.task_dir)], "limit": 10},
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}], "beat_base_by": 0.0},
    }
    path = folder / f"{TRACK}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _states() -> dict[str, tuple[ReleaseState, int]]:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        track = rows.get_track(session, name=TRACK)
        found = {}
        for release in releases.in_order(session, track=track):
            row = releases.status(session, release=release)
            found[release.ref or ""] = (row.state, row.attempts)
        return found


def _runs_of(deployment: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        return sorted(
            (run for run in client.read_flow_runs() if run.deployment_id == found.id), key=lambda r: r.created or 0
        )


def _deliver(url: str, payload: dict[str, object]) -> str:
    response = httpx.post(
        f"{url}/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET}, timeout=60
    )
    assert response.status_code in (200, 202), response.text
    return str(response.json()["status"])


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, testbed: Testbed) -> Iterator[tuple[Processes, list[str]]]:
    """olah, a Prefect server and the test's environment; the Graftwork services are started by the test
    and stopped here, before the servers."""
    data = tmp_path / "data"
    for name in ("GRAFT_DATABASE_URL", "GRAFT_BLOB_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRAFT_DATA_DIR", str(data))
    mirrors, logs = tmp_path / "mirrors", tmp_path / "logs"
    logs.mkdir()
    shas = _mirror(mirrors, testbed)
    olah = OlahServer(mirrors=mirrors, workdir=tmp_path)
    olah.start(probe="/api/models/acme/bed/refs")
    try:
        with own_prefect(tmp_path / "prefect-server") as url:  # a server of its own, not the session's
            env = {
                **os.environ,
                "PREFECT_API_URL": url,
                "PREFECT_HOME": str(tmp_path / "prefect-clients"),
                "GRAFT_DATA_DIR": str(data),
                "GRAFT_WEBHOOK_SECRET": SECRET,
                "GRAFT_HEARTBEAT_SECONDS": "2",
                "HF_ENDPOINT": olah.url,
                "HF_HUB_OFFLINE": "0",
                "HF_HOME": str(tmp_path / "hf"),
                "OMP_NUM_THREADS": "1",
            }
            services = Processes(env=env, home=logs)
            try:
                yield services, shas
            finally:
                services.stop()
    finally:
        olah.stop()


def test_releases_flow_from_a_webhook_through_the_deployments_and_survive_a_killed_worker(
    service: tuple[Processes, list[str]], testbed: Testbed, tmp_path: Path
) -> None:
    services, shas = service
    result = CliRunner().invoke(app, ["track", "add", str(_track(tmp_path, testbed))])
    assert result.exit_code == 0, result.output

    services.start("worker", "worker", "--pool", "gpu")
    services.wait("the gpu pool", lambda: _pool_exists("gpu"), timeout=120)
    services.start("serve", "serve", "--recycle-pool", "gpu")
    services.wait("the deployments", lambda: _deployed(WATCH) and _deployed(RECYCLE), timeout=180)
    port = free_port()
    services.start("webhook", "webhook", "--port", str(port))
    hook = f"http://127.0.0.1:{port}"
    services.wait("the webhook receiver", lambda: _healthy(hook), timeout=120)

    payload = hub_payload("acme/bed", refs=("refs/tags/r1", "refs/tags/r2", "refs/tags/r3"), head=shas[2])
    assert _deliver(hook, payload) == "queued"
    assert _deliver(hook, payload) == "duplicate"

    runner = services.wait("r2's run", lambda: runner_of("r2"), timeout=600)
    assert _states()["r1"] == (ReleaseState.DONE, 1)
    assert isinstance(runner, int)
    services.kill("worker")  # and the run it was running (in a session of its own), as a lost machine
    os.kill(runner, signal.SIGKILL)
    time.sleep(3)
    assert _states()["r2"][0] is ReleaseState.RUNNING  # nobody could say otherwise

    services.start("worker", "worker", "--pool", "gpu")
    run_deployment("watch-all-tracks/watch-all", timeout=0)  # the next scheduled pass, started now
    everything_done = {ref: (ReleaseState.DONE, 2 if ref == "r2" else 1) for ref in ("r1", "r2", "r3")}
    services.wait("every release done", lambda: _states() == everything_done, timeout=900)

    # Nothing starts anything again: a replayed delivery, and a watcher pass after the end.
    assert _deliver(hook, payload) == "duplicate"
    after = run_deployment(WATCH, parameters={"track": TRACK, "dispatch": "deployment"}, timeout=300)
    assert after.state is not None and after.state.is_completed(), services.tail()

    with session_scope(Workspace.from_settings().registry().engine) as session:
        delivered = session.scalars(select(WebhookDelivery).where(WebhookDelivery.track_id.is_not(None))).one()
    assert [r.idempotency_key for r in _runs_of(WATCH) if r.idempotency_key == delivered.key] == [delivered.key]
    recycle_runs = _runs_of(RECYCLE)
    assert [r.idempotency_key for r in recycle_runs] == [
        f"{TRACK}:{shas[0]}:1",
        f"{TRACK}:{shas[1]}:1",
        f"{TRACK}:{shas[1]}:2",
        f"{TRACK}:{shas[2]}:1",
    ]
    assert [r.state.type.value if r.state else None for r in recycle_runs] == [
        "COMPLETED",
        "CRASHED",
        "COMPLETED",
        "COMPLETED",
    ]
    _assert_one_candidate_per_release_carrying_the_previous_delta(shas)


def _assert_one_candidate_per_release_carrying_the_previous_delta(shas: list[str]) -> None:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        made = {}
        for sha in shas:
            release = session.scalars(select(Release).where(Release.revision == sha)).one()
            (candidate,) = session.scalars(select(Candidate).where(Candidate.release_id == release.id))
            (delta,) = session.scalars(select(Diff).where(Diff.candidate_id == candidate.id))
            decisions = session.scalars(select(Promotion).where(Promotion.to_candidate_id == candidate.id)).all()
            assert len(decisions) == 1, f"{release.ref}: {len(decisions)} decisions"
            made[release.ref] = (candidate, delta)
    assert made["r1"][0].source_diff_id is None
    assert made["r2"][0].source_diff_id == made["r1"][1].id
    assert made["r3"][0].source_diff_id == made["r2"][1].id


def _healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200


def _pool_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        client.read_work_pool(name)
    return True


def _deployed(name: str) -> bool:
    with get_client(sync_client=True) as client:
        client.read_deployment_by_name(name)
    return True
