"""Stopping `graft serve`: Ctrl-C ends it cleanly on the data dir's own Prefect server, and when the Prefect API
it was given has gone away, it ends with one line saying so instead of a traceback."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service import GRAFT, child_env, free_port, own_prefect, start

pytestmark = pytest.mark.slow
SERVING = " deployments: run-series/run-series"


@contextmanager
def serving(data_dir: Path, *, port: int | None = None, **env: str) -> Iterator[subprocess.Popen[str]]:
    """`graft serve` on `data_dir` (its Prefect server on `port`, else a free one), a few seconds after it says it
    serves (its runner starts polling after the banner); killed if the test fails before it stops."""
    env = child_env(GRAFT_DATA_DIR=str(data_dir), GRAFT_PREFECT_PORT=str(port or free_port()), **env)
    process = start([str(GRAFT), "serve"], env=env, cwd=data_dir.parent, text=True,
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


def _interrupt(process: subprocess.Popen[str], how: signal.Signals = signal.SIGINT) -> str:
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    return stderr


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_serve_and_its_server_quietly(tmp_path: Path, how: signal.Signals) -> None:
    port = free_port()
    with serving(tmp_path / "data", port=port) as process:
        stderr = _interrupt(process, how)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "RuntimeWarning" not in stderr and "never awaited" not in stderr, stderr
    assert (tmp_path / "data" / "prefect" / "prefect.db").is_file()  # the data dir's own, the one `graft ui` serves
    assert not (tmp_path / "data" / "prefect" / "server.json").exists()
    with pytest.raises(httpx.ConnectError):  # the server it started is stopped with it
        httpx.get(f"http://127.0.0.1:{port}/api/health")


def test_a_prefect_api_that_went_away_is_one_line(tmp_path: Path) -> None:
    with own_prefect(tmp_path / "elsewhere") as url:
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
