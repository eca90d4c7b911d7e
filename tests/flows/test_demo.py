"""`graft demo` in fast mode on a clean data dir: its table, the registry afterwards, and a re-run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from graftwork.flows.settings import Workspace
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, Promotion
from graftwork.tasks.testbed import Testbed

pytestmark = pytest.mark.slow
GRAFT = Path(sys.executable).parent / "graft"


def _demo(args: list[str]) -> tuple[str, float]:
    """Run `graft demo` as a user would, in its own process; return its output and wall time."""
    start = time.perf_counter()
    done = subprocess.run([str(GRAFT), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, time.perf_counter() - start


def test_the_demo_runs_on_a_clean_data_dir_and_reuses_it(
    tmp_path: Path, testbed: Testbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    args = ["demo", "--fast", "--releases", "3", "--data-dir", str(data_dir), "--testbed", str(testbed.root)]
    first, first_seconds = _demo(args)
    lines = first.splitlines()
    table = [line for line in lines if line.split()[:1] in (["M1"], ["M2"], ["M3"]) and "published" not in line]
    assert [line.split()[0] for line in table] == ["M1", "M2", "M3"]
    assert table[0].split()[2] == "—"  # the first release is plain fine-tuning: nothing to carry over
    assert all(line.split()[5].rstrip(":") in {"promote", "reject"} for line in table)
    assert "Compute that recycling saved" in first
    assert f"graft ui --data-dir {data_dir}" in first

    monkeypatch.setenv("GRAFT_DATA_DIR", str(data_dir))
    with session_scope(Workspace.from_settings().registry().engine) as session:
        candidates = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        diffs = list(session.scalars(select(Diff).order_by(Diff.id)))
        assert len(candidates) == 3 and [c.mode for c in candidates] == ["none", "iterative", "iterative"]
        assert [d.parent_id for d in diffs] == [None, diffs[0].id, diffs[1].id]
        decisions = [p.decision for p in session.scalars(select(Promotion).order_by(Promotion.id))]
        assert decisions == [line.split()[5].rstrip(":") for line in table]
        assert rows.get_track(session, name="testbed-demo").spec["eval"]["limit"] == 50
    assert (data_dir / "prefect" / "prefect.db").is_file()  # the runs are in the data dir's Prefect database

    second, second_seconds = _demo(args)
    assert second.count("(reused)") == 3 and "Reusing track testbed-demo" in second
    assert [line for line in second.splitlines() if "(reused)" in line] == [f"{t}   (reused)" for t in table]
    assert second_seconds < first_seconds / 2
