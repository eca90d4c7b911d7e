"""`graft demo` as a user runs it, in its own process: on a clean data dir, again on the same one, after a
kill, and with a Prefect server that is slow to start."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from graftwork.deployments.demo_table import HEADER
from graftwork.operations.settings import Workspace
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, Promotion
from tests.flows.conftest import kill_when

pytestmark = pytest.mark.slow
GRAFT = Path(sys.executable).parent / "graft"
SLOW_SERVER = Path(__file__).parent / "slow_server"  # a sitecustomize.py that delays `prefect server start`
ROWS = ("M1", "M2", "M3")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    for name in ("GRAFT_DATA_DIR", "GRAFT_DATABASE_URL", "GRAFT_BLOB_URL", "PREFECT_API_URL"):
        env.pop(name, None)
    return env


def _demo(args: list[str], *, code: int = 0, **env: str) -> str:
    """Run `graft demo ARGS` as a user would; return what it printed."""
    done = subprocess.run([str(GRAFT), "demo", *args], capture_output=True, text=True, timeout=900, env=_env(**env))
    assert done.returncode == code, done.stdout + done.stderr
    assert "Error logging to API" not in done.stderr  # its run logs reached its Prefect server before it stopped
    return done.stdout + done.stderr


def _table(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.split()[:1] in ([r] for r in ROWS) and ":" in line[8:]]


def _decided(data_dir: Path) -> list[tuple[str, str]]:
    """(release folder, decision) of every gate decision in the data dir's registry, in order."""
    with session_scope(Workspace.at(data_dir).registry().engine) as session:
        promotions = list(session.scalars(select(Promotion).order_by(Promotion.id)))
        return [(rows.get(session, ref=f"candidate-{p.to_candidate_id}").release.ref, p.decision) for p in promotions]  # type: ignore[union-attr]


@pytest.mark.endtoend
def test_the_demo_runs_is_killed_finishes_the_job_and_reuses_what_it_did(tmp_path: Path) -> None:
    """On a clean data dir the demo publishes release after release; killed once the second is published
    and recorded, its next run, whose Prefect server is slower to start than Prefect's own 20 s timeout, waits
    for it and finishes that release (not publishing it again) and the third, with one candidate and one
    decision each; a third run reuses everything, starts no Prefect server and prints the same table."""
    data_dir = tmp_path / "data"
    args = ["--fast", "--releases", "3", "--data-dir", str(data_dir)]
    command = [str(GRAFT), "demo", *args]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env(PYTHONUNBUFFERED="1"))
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line.rstrip("\n"))
        if line.startswith("M2: published"):
            break
    assert "Copying the shipped CPU test bed (seed 0) to " + str(data_dir / "demo" / "testbed") in seen
    assert "M1: published; the watcher finds it: carry over, fine-tune, evaluate, gate ..." in seen
    deadline = time.monotonic() + 120
    while _count(data_dir, "releases") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the watcher has recorded M2 and is running it
    demo.send_signal(signal.SIGKILL)
    demo.wait()
    deadline = time.monotonic() + 30
    while _servers_on(data_dir / "prefect"):  # the kernel stops the demo's Prefect server with it
        assert time.monotonic() < deadline, (
            f"the killed demo left its Prefect server running: {_servers_on(data_dir / 'prefect')}"
        )
        time.sleep(0.2)
    assert [ref for ref, _ in _decided(data_dir)] == ["01-M1"] and _count(data_dir, "releases") == 2

    slow = {"PYTHONPATH": str(SLOW_SERVER), "GRAFT_TEST_SERVER_DELAY": "25"}
    finished = _demo(args, **slow)
    assert "waiting for the Prefect server to start (10 s) ..." in finished
    assert "waiting for the Prefect server to start (20 s) ..." in finished
    assert "M2: published by an earlier run that stopped before its decision; finishing it ..." in finished
    assert "M3: published; the watcher finds it" in finished and "M1: published" not in finished
    table = _table(finished)
    assert [line.split()[0] for line in table] == list(ROWS)
    assert table[0].split()[2] == "—"  # the first release is plain fine-tuning: nothing to carry over
    assert "Compute that recycling saved" in finished and f"graft --data-dir {data_dir} ui" in finished
    hint = next(line for line in finished.splitlines() if line.startswith("Diff lineage: "))
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_DATA_DIR"}
    command = [str(GRAFT), *hint.removeprefix("Diff lineage: graft ").split()]
    lineage = subprocess.run(command, env=env, capture_output=True, text=True)
    assert lineage.returncode == 0 and lineage.stdout.count("diff-") >= 3, lineage  # the hint works as printed
    assert "(1 of 3 releases done by an earlier run, reused)." in finished
    assert [ref for ref, _ in _decided(data_dir)] == ["01-M1", "02-M2", "03-M3"]
    assert [d for _, d in _decided(data_dir)] == [line.split()[5].rstrip(":") for line in table]
    with session_scope(Workspace.at(data_dir).registry().engine) as session:
        candidates = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        diffs = list(session.scalars(select(Diff).order_by(Diff.id)))
        assert [c.mode for c in candidates] == ["none", "iterative", "iterative"]
        assert len({c.release_id for c in candidates}) == 3
        assert [d.parent_id for d in diffs] == [None, diffs[0].id, diffs[1].id]
        assert rows.get_track(session, name="testbed-demo").spec["eval"]["limit"] == 50
    assert (data_dir / "prefect" / "prefect.db").is_file()  # the runs are in the data dir's Prefect database
    _runs_are_named_and_logged(data_dir)

    reused = _demo(args, **slow)
    assert "Prefect server" not in reused
    assert "Reusing the CPU test bed" in reused and "Reusing track testbed-demo" in reused
    assert "published" not in reused and _table(reused) == table
    assert "(3 of 3 releases done by an earlier run, reused)." in reused


@pytest.mark.endtoend
def test_a_demo_killed_in_a_fine_tune_then_after_a_diff_ends_with_one_row_of_each(tmp_path: Path) -> None:
    """Killed during its first fine-tune, then (the next run) between registering M2's Δ and evaluating and
    gating M2, the third run finishes the job with the rows of an uninterrupted run: one candidate, one Δ
    and one decision per release, and no scratch folder left in the temp dir."""
    data_dir, temp = tmp_path / "data", tmp_path / "tmp"
    temp.mkdir()
    args = ["--fast", "--releases", "3", "--data-dir", str(data_dir)]

    def demo() -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(GRAFT), "demo", *args], stdout=subprocess.DEVNULL, env=_env(TMPDIR=str(temp)))

    kill_when(demo(), lambda: bool(list(temp.glob("graft-finetune-*"))), what="its first fine-tune")
    assert _decided(data_dir) == []
    kill_when(demo(), lambda: _count(data_dir, "diffs") >= 2, what="M2's registered Δ")
    assert [ref for ref, _ in _decided(data_dir)] == ["01-M1"]
    _demo(args, TMPDIR=str(temp))
    assert [ref for ref, _ in _decided(data_dir)] == ["01-M1", "02-M2", "03-M3"]
    assert [_count(data_dir, table) for table in ("candidates", "diffs", "promotions")] == [3, 3, 3]
    assert list(temp.glob("graft-finetune-*")) == []


def test_a_demo_with_no_release_left_to_run_starts_no_prefect_server(tmp_path: Path) -> None:
    """Once every release is decided, the next demo prints the table again from the registry without starting the
    data dir's Prefect server (no server process runs on its home meanwhile, and its log does not grow), and
    reports the time it took."""
    data_dir = tmp_path / "data"
    args = [str(GRAFT), "demo", "--fast", "--releases", "1", "--data-dir", str(data_dir)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=900, env=_env())
    assert first.returncode == 0, first.stdout + first.stderr
    log = data_dir / "prefect" / "server.log"
    logged = log.stat().st_size

    start = time.monotonic()
    again = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    servers: set[int] = set()
    while again.poll() is None:
        servers.update(_servers_on(data_dir / "prefect"))
        time.sleep(0.05)
    wall = time.monotonic() - start
    out, err = again.communicate()

    assert again.returncode == 0, out + err
    assert servers == set() and log.stat().st_size == logged
    before = first.stdout.splitlines()
    ended = next(i for i, line in enumerate(before) if line.startswith("Done in "))
    table = before[before.index(HEADER) - 1 : ended]  # the table and the summary under it
    *lines, done, last = out.splitlines()
    assert last == ""  # the live bars' end, where stdout is not a terminal
    assert lines == [
        f"Reusing the CPU test bed in {data_dir / 'demo' / 'testbed'}",
        f"Reusing track testbed-demo ({data_dir / 'demo' / 'testbed-demo.yaml'})",
        *table,
    ]
    took = re.fullmatch(r"Done in (\d+) s \(1 of 1 releases done by an earlier run, reused\)\.", done)
    assert took is not None and int(took[1]) <= wall, (done, wall)
    assert err == ""


def _servers_on(home: Path) -> list[int]:
    """The pids of the Prefect servers running on the Prefect home `home`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PREFECT_HOME={home}".encode() in environ and b"server" in command:
            found.append(int(proc.name))
    return found


def _runs_are_named_and_logged(data_dir: Path) -> None:
    """Each release's run in the demo's Prefect database is named TRACK/LABEL, and its steps' lines are in
    its logs (the demo quiets Prefect's console, not the runs' Logs tabs)."""
    with session_scope(Workspace.at(data_dir).registry().engine) as session:
        track = rows.get_track(session, name="testbed-demo")
        names = [f"testbed-demo/{r.ref}@{r.revision[:8]}" for r in releases.in_order(session, track=track)]
    steps = ("plan", "fetch", "fine-tune", "record", "diff", "evaluate candidate", "evaluate base", "gate")
    with sqlite3.connect(data_dir / "prefect" / "prefect.db", timeout=30) as db:
        for name in names:
            query = "SELECT l.message FROM log l JOIN flow_run f ON l.flow_run_id = f.id WHERE f.name = ?"
            logged = {m.split(":")[0] for (m,) in db.execute(query, (name,))}
            assert logged >= set(steps), (name, logged)


def _count(data_dir: Path, table: str) -> int:
    if not (data_dir / "registry.db").is_file():
        return 0
    with sqlite3.connect(data_dir / "registry.db", timeout=30) as db:
        try:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except sqlite3.OperationalError:  # not migrated yet
            return 0


def test_a_prefect_server_that_never_comes_up_is_one_sentence(tmp_path: Path) -> None:
    slow = {"PYTHONPATH": str(SLOW_SERVER), "GRAFT_TEST_SERVER_DELAY": "60", "GRAFT_PREFECT_STARTUP_TIMEOUT": "3"}
    output = _demo(["--fast", "--releases", "1", "--data-dir", str(tmp_path / "data")], code=1, **slow)
    log = tmp_path / "data" / "prefect" / "server.log"
    assert (
        f"error: the Prefect server did not answer within 3 s (the machine may be busy); its log is {log}. "
        "Run the command again, or raise GRAFT_PREFECT_STARTUP_TIMEOUT." in output.replace("\n", " ")
    )
    assert "Traceback" not in output
