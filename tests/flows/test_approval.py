"""A person's approval, as a team runs it: `graft serve` serves the recycle deployment on the test's Prefect server,
the watcher dispatches a release of a track whose gate says `approval: required`, and its run suspends itself
once the rules pass. `graft approve` resumes it and the promotion names the approver; the next release's run
is answered through Prefect's API with the form's input, as the UI sends it, and is rejected by that person."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import resume_flow_run
from sqlalchemy import select
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.flows.watch import watch_releases
from graftwork.operations.settings import Workspace
from graftwork.storage.db import session_scope
from graftwork.storage.models import ApprovalRequest, Promotion
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ActorKind, GateDecision
from tests.flows.conftest import write_track
from tests.service import own_prefect

pytestmark = pytest.mark.slow

GRAFT = Path(sys.executable).parent / "graft"
SERVING = " deployments: run-series/run-series"


@contextmanager
def serving(data_dir: Path, home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`graft serve` on a Prefect server of its own (its deployments are seen by no other test), the server
    and the serve's output under `home`; its process group killed afterwards."""
    log = home / "serve.log"
    with own_prefect(home / "prefect-server") as url:
        env = {**os.environ, "GRAFT_DATA_DIR": str(data_dir), "PREFECT_API_URL": url}
        with log.open("w") as out:
            process = subprocess.Popen([str(GRAFT), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        try:
            _wait(lambda: SERVING in log.read_text(), what="graft serve to serve", process=process)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait(done: Callable[[], bool], *, what: str, process: subprocess.Popen[bytes], timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, f"graft serve exited while waiting for {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(1)


def _run_of(label: str) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in client.read_flow_runs()
            if r.name.startswith(f"approved/{label}@") and r.deployment_id is not None
        ]
    return runs[-1] if runs else None


def _in(label: str, state: str) -> Callable[[], bool]:
    def check() -> bool:
        run = _run_of(label)
        return run is not None and run.state is not None and run.state.name == state

    return check


def _decisions() -> list[tuple[GateDecision, int | None, ActorKind, str, str]]:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        rows = session.scalars(select(Promotion).order_by(Promotion.id))
        return [(p.decision, p.to_candidate_id, p.actor_kind, p.actor, p.reasons[-1]) for p in rows]


@pytest.mark.endtoend
def test_a_run_waits_suspended_for_a_person_and_records_who_decided(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    path = write_track(tmp_path, testbed, name="approved", releases=(3,), steps=10)
    spec = yaml.safe_load(path.read_text())
    spec["gate"] |= {"approval": "required", "beat_champion_by": -1.0, "max_regression": 1.0}  # the rules pass
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["track", "add", str(path)])
    assert result.exit_code == 0, result.output
    with serving(data_dir, tmp_path) as served:
        watch_releases(track="approved", dispatch="deployment")
        _wait(_in("01-M3", "Suspended"), what="release 01-M3's run to suspend", process=served)
        with session_scope(Workspace.from_settings().registry().engine) as session:
            (request,) = session.scalars(select(ApprovalRequest))
            assert (request.candidate_id, request.channel) == (1, "production")
            assert request.flow_run_id == str(_run_of("01-M3").id)  # type: ignore[union-attr]
        assert _decisions() == []

        approve = CliRunner().invoke(
            app, ["approve", "candidate-1", "--as", "Ada Lovelace", "--comment", "looks right"]
        )
        assert approve.exit_code == 0, approve.output
        assert approve.stdout.startswith("candidate-1 approved and promoted by Ada Lovelace: promotion-1\n")
        assert f"resumed its suspended flow run {request.flow_run_id}" in approve.stdout
        _wait(_in("01-M3", "Completed"), what="the approved run to finish", process=served)
        assert _decisions() == [
            (GateDecision.PROMOTE, 1, ActorKind.USER, "Ada Lovelace", "approved by Ada Lovelace: looks right")
        ]

        (tmp_path / "approved-releases" / "02-M4").symlink_to(testbed.releases[3], target_is_directory=True)
        watch_releases(track="approved", dispatch="deployment")
        _wait(_in("02-M4", "Suspended"), what="release 02-M4's run to suspend", process=served)
        waiting = _run_of("02-M4")
        assert waiting is not None
        resume_flow_run(waiting.id, run_input={"approve": False, "approver": "Grace Hopper", "comment": "too close"})
        _wait(_in("02-M4", "Completed"), what="the rejected run to finish", process=served)
    assert _decisions()[1] == (
        GateDecision.REJECT,
        2,
        ActorKind.USER,
        "Grace Hopper",
        "rejected by Grace Hopper: too close",
    )
    again = CliRunner().invoke(app, ["reject", "candidate-2", "--reason", "twice"])
    assert again.stdout.startswith("candidate-2 rejected by Grace Hopper (decided before): promotion-2")
    refused = CliRunner().invoke(app, ["approve", "candidate-9"])
    assert refused.exit_code == 1 and "no candidate with id 9" in refused.stderr


def test_an_inline_run_leaves_its_candidate_waiting_for_graft_approve(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    path = write_track(tmp_path, testbed, name="approved", releases=(3,), steps=10)
    spec = yaml.safe_load(path.read_text())
    spec["gate"]["approval"] = "required"
    path.write_text(yaml.safe_dump(spec))
    assert CliRunner().invoke(app, ["track", "add", str(path)]).exit_code == 0
    done = watch_releases(track="approved")  # no deployment: the run cannot suspend, so it ends
    assert done.failed is None and done.started == [1]
    assert _decisions() == []
    status = CliRunner().invoke(app, ["track", "status", "approved"])
    assert "waiting for approval (graft approve candidate-1)" in status.stdout
    approve = CliRunner().invoke(app, ["approve", "1", "--as", "Ada Lovelace"])
    assert approve.exit_code == 0, approve.output
    assert approve.stdout.splitlines()[0] == "candidate-1 approved and promoted by Ada Lovelace: promotion-1"
    assert "resumed" not in approve.stdout
    assert _decisions() == [(GateDecision.PROMOTE, 1, ActorKind.USER, "Ada Lovelace", "approved by Ada Lovelace")]
    assert "waiting" not in CliRunner().invoke(app, ["track", "status", "approved"]).stdout
