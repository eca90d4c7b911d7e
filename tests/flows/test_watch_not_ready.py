"""A served watcher pass over a track whose release directory is gone: one sentence in its run's log that names
the track, the folder and the fix, and no traceback, run as `graft serve`'s runner runs it (`python -m
prefect.engine` in a process of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.flows import Flow
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.flows.watch import watch_all_tracks, watch_releases
from graftwork.tasks.testbed import Testbed

pytestmark = pytest.mark.slow
ERROR = 40


def _add_track(folder: Path, testbed: Testbed, *, name: str) -> Path:
    release_dir = folder / f"{name}-releases"
    release_dir.mkdir(parents=True)
    spec = {
        "name": name,
        "source": {"kind": "local", "release_dir": str(release_dir)},
        "finetune": {"data": str(testbed.train_data)},
        "eval": {"tasks": [testbed.generate_task], "task_dirs": [str(testbed.task_dir)]},
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}]},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["track", "add", str(folder / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    return release_dir


def _serve_run(flow: Flow[..., Any], entrypoint: str, **parameters: object) -> tuple[UUID, str]:
    """Run `flow` as a served deployment's runner does; its flow run's id and the process's stderr."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow, parameters=parameters)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT__FLOW_RUN_ID": str(run.id)}
    env["PREFECT__FLOW_ENTRYPOINT"] = entrypoint
    engine = [sys.executable, "-m", "prefect.engine"]
    done = subprocess.run(engine, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run.id, done.stderr


def _logs(client: SyncPrefectClient, run_id: UUID) -> list[tuple[int, str]]:
    """(level, message) of a finished flow run's log, once Prefect has them all."""
    deadline = time.monotonic() + 60
    while True:
        found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        if any(log.message.startswith("Finished in state") for log in found) or time.monotonic() > deadline:
            return [(log.level, log.message) for log in found]
        time.sleep(0.5)


def test_a_served_watcher_pass_on_a_missing_release_dir_is_one_sentence_and_no_traceback(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    gone = _add_track(tmp_path, testbed, name="vanished")
    _add_track(tmp_path, testbed, name="present")
    gone.rmdir()
    sentence = f"track vanished: Release directory {gone} does not exist; create it or fix the track's release_dir."

    alone, alone_err = _serve_run(
        watch_releases, "graftwork.flows.watch.watch_releases", track="vanished", dispatch="deployment"
    )
    every, every_err = _serve_run(watch_all_tracks, "graftwork.flows.watch.watch_all_tracks")
    assert "Traceback" not in alone_err + every_err, alone_err + every_err
    with get_client(sync_client=True) as client:
        passes = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["vanished/watch"])))
        assert {run.id for run in passes} >= {alone} and len(passes) == 2  # its own, and watch-all's pass over it
        for run in passes:
            assert run.state_type is StateType.COMPLETED
            logs = _logs(client, run.id)
            assert [message for level, message in logs if level >= ERROR] == [sentence]
            assert not any("Traceback" in message for _, message in logs), logs
        assert client.read_flow_run(every).state_type is StateType.COMPLETED
        everything = _logs(client, every)
        assert [message for level, message in everything if level >= ERROR] == []
        assert not any("Traceback" in message for _, message in everything), everything
