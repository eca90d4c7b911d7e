"""Stopping `graft serve`: Ctrl-C ends it cleanly on the data dir's own Prefect server, and when the Prefect API
it was given has gone away, it ends with one line saying so instead of a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from graftwork.flows.local_server import local_prefect

pytestmark = pytest.mark.slow
GRAFT = Path(sys.executable).parent / "graft"
SERVING = "Your deployments are being served"


@contextmanager
def serving(data_dir: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """`graft serve` on `data_dir`, a few seconds after it says it serves (its runner starts polling after the
    banner); killed if the test fails before it stops."""
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "GRAFT_DATABASE_URL", "GRAFT_BLOB_URL")}
    command = [str(GRAFT), "serve"]
    process = subprocess.Popen(command, env={**base, "GRAFT_DATA_DIR": str(data_dir), **env}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        while SERVING not in process.stdout.readline():
            assert process.poll() is None and time.monotonic() < deadline, "graft serve never served"
        time.sleep(5)
        yield process
    finally:
        process.kill()
        process.wait()


def _interrupt(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return stderr


def test_ctrl_c_stops_serve_and_its_server_quietly(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as process:
        stderr = _interrupt(process)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "RuntimeWarning" not in stderr, stderr
    assert (tmp_path / "data" / "prefect" / "prefect.db").is_file()  # the data dir's own, the one `graft ui` serves


def test_a_prefect_api_that_went_away_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with local_prefect(home=tmp_path / "elsewhere", startup_timeout=240) as url:
        server = serving(tmp_path / "data", PREFECT_API_URL=url)
        process = server.__enter__()
    try:  # the server of `url` is stopped now; serve's runner finds out as it polls
        time.sleep(5)
        stderr = _interrupt(process)
    finally:
        server.__exit__(None, None, None)
    # Prefect's runner, stopping, meets the dead API only when it still has something to tell it (pausing the
    # deployments): then serve ends with the one line below; otherwise it stops cleanly. Either way, no
    # traceback of serve's own and no RuntimeWarning.
    assert process.returncode in (0, 1), stderr
    assert "RuntimeWarning" not in stderr
    if process.returncode == 1:
        assert stderr.splitlines()[-1] == (
            f"error: the Prefect API at {url} stopped answering (ConnectError: All connection attempts failed); "
            "`graft serve` stopped without pausing its deployments. Start that server again (or unset "
            "PREFECT_API_URL to serve on the data dir's own) and run `graft serve` again."
        )
