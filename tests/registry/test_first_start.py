"""Concurrent first starts on an empty database all succeed, on SQLite and on PostgreSQL: each racer opens the
registry as a command does (`make_engine`, then `ensure_schema`), released a few milliseconds apart so that one
meets another's first connection, round after round. On SQLite the first one creates the file, with its header,
under a lock, so that no other takes a file being created for an empty one (before, 4 of 4 rounds failed so);
the migrations themselves queue on the migration lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect

from graftwork.storage.db import head_revision, make_engine
from tests.service import child_env

RACERS = 4
ROUNDS = 4
SPREAD_S = 0.004  # racer i opens the registry i × SPREAD_S after the start: one meets another's first connection
RACER = """
    import sys, time
    from pathlib import Path
    from graftwork.storage.db import current_revision, ensure_schema, make_engine
    url, ready, go, delay = sys.argv[1:]
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.001)
    time.sleep(float(delay))
    engine = make_engine(url)
    ensure_schema(engine)
    print(current_revision(engine))
"""


def _url(database_url: str, round_: int) -> str:
    """A URL of another fresh database per round (SQLite: another file; PostgreSQL: the test's own, once)."""
    if database_url.startswith("sqlite:///"):
        return database_url.replace("registry.db", f"round-{round_}/registry.db")
    return database_url


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_first_starts_racing_on_an_empty_database_all_succeed(database_url: str, tmp_path: Path, round_: int) -> None:
    url = _url(database_url, round_)
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(RACER),
                url,
                str(tmp_path / f"ready-{i}"),
                str(go),
                str(i * SPREAD_S),
            ],
            env=child_env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(RACERS)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(RACERS)):
        assert all(r.poll() is None for r in racers) and time.monotonic() < deadline, "a racer died before the start"
        time.sleep(0.01)
    go.touch()
    said = [racer.communicate(timeout=300) for racer in racers]
    assert [r.returncode for r in racers] == [0] * RACERS, said
    assert [out.strip() for out, _ in said] == [head_revision()] * RACERS
    engine = make_engine(url)
    assert "promotions" in inspect(engine).get_table_names()
    engine.dispose()
