"""A Prefect server for one command, on the data dir's own Prefect database: what `graft demo` and
`graft track watch` run their flows on when no `PREFECT_API_URL` names a server.

Prefect's own ephemeral server gives up after 20 s (`PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`)
and then fails with a traceback; on a busy machine its start can take longer. So the command starts
the server itself (`prefect server start` on a free 127.0.0.1 port, its log in `PREFECT_HOME/server.log`),
waits for its health check as long as it is told to (saying so while it waits), points Prefect at it
for the duration, and stops it at the end. On Linux the kernel stops the server too when the command
dies without a chance to (SIGKILL, the OOM killer), so no server is left behind listening.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ..errors import LocalPrefectError
from ..fs import Say, die_with_parent

HEALTH_POLL_S = 0.25
SAY_EVERY_S = 10.0
SERVER_LOG = "server.log"


@contextmanager
def local_prefect(*, home: Path, startup_timeout: float, say: Say | None = None) -> Iterator[str]:
    """Prefect for the duration of the block: the server `PREFECT_API_URL` names if it is set (yielded as
    it is), else one started on `home/prefect.db` and stopped when the block ends (its API URL yielded).

    Raises:
        LocalPrefectError: the server did not answer within `startup_timeout` seconds, or exited; the
            message says where its log is and what to do.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    if PREFECT_API_URL.value():
        yield str(PREFECT_API_URL.value())
        return
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / SERVER_LOG
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--no-ui", "--no-services"]
    with log.open("ab") as out:
        server = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
    try:
        _wait_healthy(server, url=url, log=log, timeout=startup_timeout, say=say)
        settings = {PREFECT_API_URL: url, PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}
        with temporary_settings(updates=settings):
            try:
                yield url
            finally:
                _send_pending_logs()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _send_pending_logs() -> None:
    """Send the run logs Prefect still holds to the server while it is up: left for Prefect's exit hook,
    they would meet a stopped server and print "Error logging to API" as the command ends."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def _wait_healthy(server: subprocess.Popen[bytes], *, url: str, log: Path, timeout: float, say: Say | None) -> None:
    start = time.monotonic()
    next_say = start + SAY_EVERY_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            if server.poll() is not None:
                raise LocalPrefectError(
                    f"the local Prefect server exited (status {server.returncode}) before it answered; "
                    f"its log is {log}. Fix what it says, or start one with `graft ui` and set PREFECT_API_URL.",
                    path=log,
                )
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            now = time.monotonic()
            if now - start > timeout:
                raise LocalPrefectError(
                    f"the local Prefect server did not answer within {timeout:.0f} s (the machine may be busy); "
                    f"its log is {log}. Run the command again, raise GRAFT_PREFECT_STARTUP_TIMEOUT, or start "
                    "a server with `graft ui` and set PREFECT_API_URL=http://127.0.0.1:4200/api.",
                    path=log,
                )
            if say is not None and now >= next_say:
                say(f"  waiting for the local Prefect server to start ({now - start:.0f} s) ...")
                next_say = now + SAY_EVERY_S
            time.sleep(HEALTH_POLL_S)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
