"""The databases tests run on: `database_url` gives a fresh SQLite file, then a fresh PostgreSQL database.

PostgreSQL comes from pytest-postgresql: the server at PGHOST:PGPORT (default 127.0.0.1:5432, user
postgres) when one is running, else one started from the system's binaries. When neither can be had
the PostgreSQL half is skipped with a banner at the end of the run, and under CI (`CI=true`) it fails.
The root conftest registers these fixtures once, for every test folder (registered twice, the
session's template database would be created twice).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql import factories
from pytest_postgresql.janitor import DatabaseJanitor

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
PG_USER = os.environ.get("PGUSER", "postgres")
_unavailable: list[str] = []


def _server_running() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


if _server_running():
    # A template database name of our own, so that two test runs on one server do not collide.
    postgresql_server = factories.postgresql_noproc(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=f"graftwork_tmpl_{os.getpid()}"
    )
else:
    postgresql_server = factories.postgresql_proc(port=None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unavailable:
        terminalreporter.section("PostgreSQL UNAVAILABLE", sep="!", red=True, bold=True)
        terminalreporter.write_line(f"the registry tests did NOT run on PostgreSQL: {_unavailable[0]}", red=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    try:
        server = request.getfixturevalue("postgresql_server")
    except Exception as e:  # whatever stopped the server from starting (e.g. initdb refusing root)
        reason = f"PostgreSQL cannot be had ({type(e).__name__}: {e})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the registry tests on PostgreSQL.")
        _unavailable.append(reason)
        pytest.skip(reason)
    dbname = f"graft_test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.user, host=server.host, port=server.port, dbname=dbname, password=server.password
    )
    with janitor:
        yield f"postgresql+psycopg://{server.user}@{server.host}:{server.port}/{dbname}"
