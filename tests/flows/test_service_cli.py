"""`graft track`, `graft serve`, `graft worker` and `graft ui`: what the README tells an operator to run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from graftwork.deployments import serve
from graftwork.deployments.cli import app
from graftwork.tasks.testbed import Testbed
from tests.flows.conftest import write_track
from tests.service import GRAFT, child_env, free_port, start

runner = CliRunner()
RECYCLE = "recycle-then-finetune/recycle-then-finetune"


def _graft(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.output


def test_track_add_list_show(data_dir: Path, testbed: Testbed, tmp_path: Path) -> None:
    assert _graft("track", "list").strip() == "no tracks yet: `graft track add FILE`"
    path = write_track(tmp_path, testbed, name="bed", releases=(2,), mode="source")
    assert "added track bed (local releases, source recycling)" in _graft("track", "add", str(path))
    assert (
        _graft("track", "add", str(path)).strip()
        == "track bed (local releases, source recycling) unchanged, spec version 1"
    )
    assert _graft("track", "list").splitlines() == [
        "track                    source     mode       channel",
        "bed                      local      source     production",
    ]
    shown = _graft("track", "show", "bed")
    assert yaml.safe_load(shown[: shown.index("champion on")])["finetune"]["recipe"]["steps"] == 30
    assert shown.rstrip().endswith("champion on production: none yet\nreleases: none yet (`graft track watch` looks)")
    assert "no track named 'nope'" in _graft("track", "show", "nope", code=1)


def test_serve_serves_a_watcher_for_each_registered_track(
    data_dir: Path, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[object] = []
    monkeypatch.setattr(serve, "run_runner", ran.append)
    _graft("track", "add", str(write_track(tmp_path, testbed, name="bed", releases=(2,))))
    said = _graft("serve", "--watch-minutes", "5")
    assert "watching every track every 5 min (now: bed); recycle runs here" in said
    served = said.split(" deployments: ", 1)[1].splitlines()[0].split(", ")
    assert {"watch-all-tracks/watch-all", "watch-releases/watch-releases", RECYCLE} <= set(served)
    assert len(ran) == 1
    with get_client(sync_client=True) as client:
        schedules = client.read_deployment_by_name("watch-all-tracks/watch-all").schedules
    assert [s.schedule.interval for s in schedules] == [timedelta(minutes=5)]  # type: ignore[union-attr]


def test_worker_creates_its_pool_once(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, str]] = []
    monkeypatch.setattr(serve, "start_worker", lambda *, pool, env: started.append((pool, env["PREFECT_API_URL"])))
    assert "created work pool gpu (concurrency 1)" in _graft("worker", "--pool", "gpu")
    assert "created" not in _graft("worker", "--pool", "gpu")
    assert started == [("gpu", str(PREFECT_API_URL.value()))] * 2  # the server the other commands use
    assert "'tpu' is not a Graftwork pool; use one of cpu, gpu" in _graft("worker", "--pool", "tpu", code=2)


def test_ui_serves_the_data_dirs_server_with_its_ui_and_says_where_it_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"  # not there yet: the UI makes it
    port = free_port()
    env = child_env(GRAFT_PREFECT_PORT=str(port))
    ui = start([str(GRAFT), "ui", "--data-dir", str(data_dir)], env=env, cwd=tmp_path, text=True,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert ui.stdout is not None
        deadline = time.monotonic() + 240
        while "Ctrl-C stops it" not in (line := ui.stdout.readline()):
            assert ui.poll() is None and time.monotonic() < deadline, "graft ui never served"
        assert line.startswith(f"Prefect UI on http://127.0.0.1:{port} (database {data_dir / 'prefect'}/prefect.db)")
        page = httpx.get(f"http://127.0.0.1:{port}/deployments", headers={"Accept": "text/html"}, follow_redirects=True)
        assert page.status_code == 200 and "<html" in page.text.lower()  # the UI, not a 404 of a server without it
        record = json.loads((data_dir / "prefect" / "server.json").read_text())
        assert record["api_url"] == f"http://127.0.0.1:{port}/api"
        again = subprocess.run([str(GRAFT), "ui", "--data-dir", str(data_dir)], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert (again.returncode, again.stdout) == (
            0,
            f"this data dir's Prefect server runs already: its UI is at http://127.0.0.1:{port}\n",
        ), again.stderr
        ui.send_signal(signal.SIGINT)
        _, stderr = ui.communicate(timeout=60)
    finally:
        ui.kill()
        ui.wait()
    assert ui.returncode == 0 and "Traceback" not in stderr, stderr
    assert not (data_dir / "prefect" / "server.json").exists()
    with pytest.raises(httpx.ConnectError):  # stopping `graft ui` stopped its server: nothing is left listening
        httpx.get(f"http://127.0.0.1:{port}/api/health")
