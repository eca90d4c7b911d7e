"""`graft track`, `graft serve`, `graft worker` and `graft ui`: what the README tells an operator to run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftwork.deployments import serve
from graftwork.deployments.cli import app
from graftwork.tasks.testbed import Testbed
from tests.flows.conftest import write_track

runner = CliRunner()


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
    assert json.loads(shown[: shown.rindex("}") + 1])["finetune"]["recipe"]["steps"] == 30
    assert shown.rstrip().endswith("champion on production: none yet\nreleases: none yet (`graft track watch` looks)")
    assert "no track named 'nope'" in _graft("track", "show", "nope", code=1)


def test_serve_serves_a_watcher_for_each_registered_track(
    data_dir: Path, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    monkeypatch.setattr(serve, "serve", lambda *ds: served.extend(d.name for d in ds))
    _graft("track", "add", str(write_track(tmp_path, testbed, name="bed", releases=(2,))))
    assert "watching every track every 5 min (now: bed); recycle runs here" in _graft("serve", "--watch-minutes", "5")
    assert {"watch-all", "watch-releases", "recycle-then-finetune"} <= set(served)


def test_worker_creates_its_pool_once(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    monkeypatch.setattr(serve, "start_worker", lambda *, pool: started.append(pool))
    assert "created work pool gpu (concurrency 1)" in _graft("worker", "--pool", "gpu")
    assert "created" not in _graft("worker", "--pool", "gpu")
    assert started == ["gpu", "gpu"]
    assert "'tpu' is not a Graftwork pool; use one of cpu, gpu" in _graft("worker", "--pool", "tpu", code=2)


def test_ui_serves_the_data_dirs_prefect_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"  # not there yet: the UI makes it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    graft = Path(sys.executable).parent / "graft"
    server = subprocess.Popen(
        [str(graft), "ui", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    assert json.loads(response.read()) is True
                    break
            except OSError:
                assert server.poll() is None, "graft ui exited"
                assert time.monotonic() < deadline, "graft ui did not answer within 90 s"
                time.sleep(0.5)
        assert (data_dir / "prefect" / "prefect.db").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)
    deadline = time.monotonic() + 15
    while True:  # stopping `graft ui` stops the server: nothing is left listening
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, f"a server still listens on {port} after graft ui stopped"
        time.sleep(0.5)
