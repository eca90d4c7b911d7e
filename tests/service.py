"""What tests of the running service share: a Prefect server of the test's own started the way Graftwork starts
one, and child processes whose environment, working folder and signal dispositions the test sets, whatever the
shell that started the suite left them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prefect.exceptions import ObjectNotFound

GRAFT = Path(sys.executable).parent / "graft"
# What a test's environment may carry that would point a child at another server, registry or auth string.
NOT_INHERITED = (
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_HOME",
    "GRAFT_DATA_DIR",
    "GRAFT_DATABASE_URL",
    "GRAFT_BLOB_URL",
    "GRAFT_PREFECT_HOST",
    "GRAFT_PREFECT_PORT",
)


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The suite's environment without what names a server, registry or data dir, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(OMP_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal gives them (a background shell leaves SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(argv: list[str], *, env: dict[str, str], cwd: Path, **popen: Any) -> subprocess.Popen[Any]:
    """Start `argv` in `cwd` with exactly `env`, SIGINT and SIGTERM at their defaults."""
    return subprocess.Popen(argv, env=env, cwd=cwd, preexec_fn=_default_signals, **popen)


@contextmanager
def own_prefect(data_dir: Path) -> Iterator[str]:
    """The Prefect server of `data_dir`, on a free port, started as `graft serve` starts it, with this process's
    Prefect clients pointed at it; stopped afterwards. Yields its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from graftwork.deployments.local_server import prefect_service
    from graftwork.operations.settings import GraftSettings

    settings = GraftSettings(data_dir=data_dir, prefect_port=free_port())
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        prefect_service(settings=settings, say=lambda _: None, own=True) as target,
    ):
        yield target.api_url


@dataclass
class Processes:
    """`graft` processes a test starts as a user would (each in a session of its own, logging to `home/NAME.log`,
    with `home` as working folder); `stop` ends them all."""

    env: dict[str, str]
    home: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        with (self.home / f"{name}.log").open("ab") as log:
            self.running[name] = start(
                [str(GRAFT), *args],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def graft(self, *args: str) -> str:
        done = subprocess.run([str(GRAFT), *args], env=self.env, cwd=self.home, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name, process in list(self.running.items()):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            del self.running[name]

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.home.glob("*.log")))

    def wait(self, what: str, ready: Callable[[], Any], *, timeout: float) -> Any:
        """Poll `ready` until it returns something true, and return that; fail with the logs when a process
        exits meanwhile or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if value := ready():
                    return value
            except (httpx.HTTPError, ObjectNotFound):
                pass
            for name, process in self.running.items():
                assert process.poll() is None, f"{name} exited with {process.returncode}\n{self.tail()}"
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s\n{self.tail()}"
            time.sleep(1)


def runner_of(ref: str) -> int | None:
    """The process id that runs the release `ref` (a tag, a branch or a release folder's name) of the settings'
    registry, while it is `running`."""
    from sqlalchemy import select

    from graftwork.operations.settings import Workspace
    from graftwork.storage import releases
    from graftwork.storage.db import session_scope
    from graftwork.storage.models import Release
    from graftwork.terms import ReleaseState

    with session_scope(Workspace.from_settings().registry().engine) as session:
        release = session.scalars(select(Release).where(Release.ref == ref)).one_or_none()
        if release is None:
            return None
        row = releases.status(session, release=release)
        if row.state is not ReleaseState.RUNNING or not row.runner:
            return None
        return int(row.runner.rpartition(":")[2])
