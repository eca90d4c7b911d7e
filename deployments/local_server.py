"""The data dir's own Prefect server: one per data dir, at an address known before it starts, with its services
(scheduler, task-run recorder, event persister, triggers and automations) and its UI.

Every command that talks to Prefect finds its server the same way (`prefect_api.endpoint`). `graft serve`,
`graft ui`, the demo and `graft track watch` start the data dir's server when none runs and stop it when they end;
a server already running there (started by `graft ui` or another `graft serve`) is used and left running.
Beyond loopback the server requires Prefect's basic auth: its string is `PREFECT_API_AUTH_STRING`, given to
the server as `PREFECT_SERVER_API_AUTH_STRING` and sent by every client.

A server this module starts runs in its own session (Ctrl-C in the terminal reaches the command, which stops
its runs first and the server last) and, on Linux, is stopped by the kernel when the command dies without a
chance to (SIGKILL, the OOM killer), so no server is left behind listening.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ..errors import LocalPrefectError
from ..fs import Say, as_ctrl_c, die_with_parent, process_alive, write_text_atomic
from ..operations.settings import GraftSettings, child_environment
from .prefect_api import (
    RECORD,
    Endpoint,
    api_url,
    auth_string,
    check,
    connected,
    endpoint,
    is_loopback,
    prefect_home,
    read_record,
)

HEALTH_POLL_S = 0.25
SAY_EVERY_S = 10.0
SERVER_LOG = "server.log"
STOP_TIMEOUT_S = 30.0
# The server's event persister and task-run recorder write what they are sent in batches, and write what they hold
# when the server stops; this is the time left to the server to take in what the command sent last (`connected`
# sends what the command still holds as its block ends, before the server is stopped).
SETTLE_S = 2.0


@contextmanager
def prefect_service(
    *,
    settings: GraftSettings,
    say: Say,
    own: bool = False,
    host: str | None = None,
    port: int | None = None,
) -> Iterator[Endpoint]:
    """Prefect for the block: the server `endpoint` finds if it runs, else the data dir's server started at
    `host`:`port` (default: the settings') and stopped when the block ends, after it has recorded what the
    block's runs sent it. With `own`, `PREFECT_API_URL` is not looked at (the demo's runs stay with its data).

    Raises:
        LocalPrefectError: as `check`; a non-loopback `host` without an auth string; the server did not
            answer within the settings' startup timeout, or exited (the message says where its log is).
    """
    found = endpoint(settings, own=own)
    if not found.explicit:
        _await_orphan(prefect_home(settings), say=say)
    if found.explicit or check(found):
        if not found.explicit:
            say(f"using this data dir's Prefect server at {found.ui_url}")
        with connected(found):
            yield found
        return
    bind = host or settings.prefect_host
    with (
        _started(
            home=prefect_home(settings),
            host=bind,
            port=port or settings.prefect_port,
            timeout=settings.prefect_startup_timeout,
            say=say,
        ) as started,
        connected(started),
    ):
        yield started


@contextmanager
def _started(*, home: Path, host: str, port: int, timeout: float, say: Say) -> Iterator[Endpoint]:
    auth = auth_string()
    if not is_loopback(host) and not auth:
        raise LocalPrefectError(
            f"the Prefect server would listen on {host}, beyond this machine, with no authentication: anyone who "
            "reaches it could run the promote and rollback deployments. Set PREFECT_API_AUTH_STRING (make one with "
            "`openssl rand -hex 32`; clients send the same), or bind to 127.0.0.1.",
            path=home,
        )
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalPrefectError(
            f"cannot create {home} for the Prefect server: {e.strerror}; choose another --data-dir.", path=home
        ) from None
    target = Endpoint(api_url=api_url(host=host, port=port), auth=auth, home=home)
    log = home / SERVER_LOG
    say(f"starting this data dir's Prefect server at {target.ui_url} (its log: {log})")
    server = _spawn(target, home=home, host=host, port=port, log=log)
    try:
        _wait_healthy(server, target=target, log=log, timeout=timeout, say=say)
        record = {"api_url": target.api_url, "pid": server.pid, "owner": os.getpid()}
        write_text_atomic(home / RECORD, json.dumps(record))
        try:
            yield target
        finally:
            (home / RECORD).unlink(missing_ok=True)
            time.sleep(SETTLE_S)
    finally:
        _stop(server)


def _spawn(target: Endpoint, *, home: Path, host: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = child_environment(drop=("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"))
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.setdefault("PREFECT_UI_API_URL", target.api_url)
    # The UI's files, prepared for this server's address, in its home: not in the installed package, which every
    # data dir's server shares.
    env.setdefault("PREFECT_SERVER_UI_STATIC_DIRECTORY", str(home / "ui"))
    if target.auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = target.auth
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
            start_new_session=True,
            restore_signals=True,
        )


def wait(target: Endpoint) -> None:
    """Block until the server of `target` (started by this process) stops answering, or Ctrl-C / SIGTERM."""
    signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        with httpx.Client(timeout=5.0) as client:
            while True:
                time.sleep(1.0)
                try:
                    client.get(f"{target.api_url}/health")
                except httpx.ConnectError:
                    return
    except KeyboardInterrupt:
        return


def _await_orphan(home: Path, *, say: Say) -> None:
    """Wait for a server whose command died (SIGKILL, the OOM killer) to finish stopping: the kernel has told it
    to, and a command that used it meanwhile would lose it mid-run."""
    record = read_record(home)
    if record is None or not process_alive(record["pid"]) or process_alive(record["owner"]):
        return
    say(f"waiting for the Prefect server of a command that died (process {record['pid']}) to stop ...")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while process_alive(record["pid"]) and time.monotonic() < deadline:
        time.sleep(HEALTH_POLL_S)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _wait_healthy(server: subprocess.Popen[bytes], *, target: Endpoint, log: Path, timeout: float, say: Say) -> None:
    start = time.monotonic()
    next_say = start + SAY_EVERY_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            if server.poll() is not None:
                raise LocalPrefectError(
                    f"the Prefect server exited (status {server.returncode}) before it answered at {target.api_url}; "
                    f"its log is {log}. Fix what it says (a port in use: set GRAFT_PREFECT_PORT to a free one).",
                    path=log,
                )
            try:
                if client.get(f"{target.api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            now = time.monotonic()
            if now - start > timeout:
                raise LocalPrefectError(
                    f"the Prefect server did not answer within {timeout:.0f} s (the machine may be busy); its log is "
                    f"{log}. Run the command again, or raise GRAFT_PREFECT_STARTUP_TIMEOUT.",
                    path=log,
                )
            if now >= next_say:
                say(f"  waiting for the Prefect server to start ({now - start:.0f} s) ...")
                next_say = now + SAY_EVERY_S
            time.sleep(HEALTH_POLL_S)
