"""The data dir's Prefect server as a user meets it when something is wrong: its port taken by another program,
no server where a command needs one, a server beyond loopback without authentication, and Prefect's basic auth
on a real server on 127.0.0.1 (a request without credentials is refused; a wrong auth string is one sentence)."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service import GRAFT, child_env, free_port, start

AUTH = "graft:0123456789abcdef"


def _graft(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRAFT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@contextmanager
def _not_prefect(port: int) -> Iterator[None]:
    """A web server on 127.0.0.1:`port` that is not Prefect (it answers 404 to everything)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_serve_on_a_port_another_program_holds_is_one_sentence(tmp_path: Path) -> None:
    port = free_port()
    env = child_env(GRAFT_DATA_DIR=str(tmp_path / "data"), GRAFT_PREFECT_PORT=str(port))
    with _not_prefect(port):
        done = _graft("serve", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: http://127.0.0.1:{port} is taken by something that is not a Prefect server (GET /api/health "
        "answered 501); stop it, or set GRAFT_PREFECT_PORT to a free port.\n"
    )


def test_commands_that_need_the_server_say_so_when_none_runs(tmp_path: Path) -> None:
    port = free_port()
    env = child_env(GRAFT_DATA_DIR=str(tmp_path / "data"), GRAFT_PREFECT_PORT=str(port), GRAFT_WEBHOOK_SECRET="s")
    expected = (
        f"error: no Prefect server answers at http://127.0.0.1:{port}/api (this data dir's server): start it with "
        "`graft serve` or `graft ui`, or set PREFECT_API_URL.\n"
    )
    for command in (["webhook"], ["worker", "--pool", "cpu"]):
        done = _graft(*command, env=env, cwd=tmp_path)
        assert (done.returncode, done.stderr) == (1, expected), command
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    done = _graft("webhook", env=env, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        1,
        f"error: no Prefect server answers at http://127.0.0.1:{port}/api (PREFECT_API_URL): start it, or unset "
        "PREFECT_API_URL to use this data dir's own.\n",
    )


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_a_server_beyond_loopback_needs_an_auth_string(tmp_path: Path, command: str) -> None:
    env = child_env(GRAFT_DATA_DIR=str(tmp_path / "data"), GRAFT_PREFECT_PORT=str(free_port()))
    done = _graft(command, "--host", "0.0.0.0", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "error: the Prefect server would listen on 0.0.0.0, beyond this machine, with no authentication: anyone who "
        "reaches it could run the promote and rollback deployments. Set PREFECT_API_AUTH_STRING"
    )
    assert not (tmp_path / "data" / "prefect" / "server.json").exists()


@pytest.mark.slow
def test_the_server_refuses_requests_without_its_auth_string(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = child_env(GRAFT_DATA_DIR=str(data), GRAFT_PREFECT_PORT=str(port), PREFECT_API_AUTH_STRING=AUTH)
    ui = start([str(GRAFT), "ui"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 240
        while not (data / "prefect" / "server.json").exists():
            assert ui.poll() is None and time.monotonic() < deadline, "graft ui never served"
            time.sleep(0.5)
        assert httpx.post(f"{api}/flows/filter", json={}).status_code == 401
        assert httpx.post(f"{api}/flows/filter", json={}, auth=tuple(AUTH.split(":", 1))).status_code == 200
        assert httpx.get(f"{api}/health").status_code == 200  # probes need no credentials
        ok = _graft("ui", env=env, cwd=tmp_path)
        assert (ok.returncode, ok.stdout) == (
            0,
            f"this data dir's Prefect server runs already: its UI is at {api[:-4]}\n",
        )
        for auth, refusal in (
            ("graft:wrong", "refused the auth string PREFECT_API_AUTH_STRING gives"),
            (None, "requires an auth string"),
        ):
            other = {k: v for k, v in env.items() if k != "PREFECT_API_AUTH_STRING"}
            if auth:
                other["PREFECT_API_AUTH_STRING"] = auth
            done = _graft("ui", env=other, cwd=tmp_path)
            assert (done.returncode, done.stderr) == (
                1,
                f"error: the Prefect server at {api} {refusal} (401); set PREFECT_API_AUTH_STRING to the server's.\n",
            )
        elsewhere = {**env, "GRAFT_DATA_DIR": str(tmp_path / "other")}  # another data dir, told the same port
        done = _graft("serve", env=elsewhere, cwd=tmp_path)
        assert (done.returncode, done.stderr) == (
            1,
            f"error: {api[:-4]} is another Prefect server (its home is {data / 'prefect'}, this data dir's is "
            f"{tmp_path / 'other' / 'prefect'}); stop it, or give this data dir its own port with "
            "GRAFT_PREFECT_PORT.\n",
        )
    finally:
        ui.terminate()
        ui.wait(timeout=60)
