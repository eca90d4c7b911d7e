"""Flow fixtures: a Prefect test harness for the session, a fresh data dir per test, and track files
over the test bed's releases."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.tasks.testbed import Testbed

runner = CliRunner()


def graft(*args: str, code: int = 0) -> str:
    """Run `graft ARGS` in this process and check that it exits with `code`; its stdout, or, when it must fail, its
    stderr then its stdout."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.stderr + result.stdout


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None) -> Path:
    """An empty Graftwork data dir (its SQLite registry and blob store) for this test."""
    root = tmp_path / "data"
    monkeypatch.setenv("GRAFT_DATA_DIR", str(root))
    monkeypatch.delenv("GRAFT_DATABASE_URL", raising=False)
    monkeypatch.delenv("GRAFT_BLOB_URL", raising=False)
    return root


def write_track(
    folder: Path,
    testbed: Testbed,
    *,
    name: str,
    releases: tuple[int, ...],
    mode: str = "iterative",
    steps: int = 30,
    recipe: dict[str, object] | None = None,
) -> Path:
    """A track file whose release dir holds the test bed's releases M_i (1-based), in that order; `recipe`
    adds to (or overrides) the recipe's fields."""
    release_dir = folder / f"{name}-releases"
    release_dir.mkdir(parents=True)
    for n, i in enumerate(releases, 1):
        (release_dir / f"{n:02d}-M{i}").symlink_to(testbed.releases[i - 1], target_is_directory=True)
    spec = {
        "name": name,
        "source": {"kind": "local", "release_dir": str(release_dir)},
        "finetune": {"data": str(testbed.train_data), "recipe": {"steps": steps, "seed": 0, **(recipe or {})}},
        "recycle": {"mode": mode, "alpha": 1.0},
        "eval": {
            "name": "testbed",
            "tasks": [testbed.generate_task],
            "task_dirs": [str(testbed.task_dir)],
            "limit": 40,
        },
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}], "beat_base_by": 0.0},
        "channel": "production",
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def kill_when(process: subprocess.Popen[bytes], reached: Callable[[], bool], *, what: str) -> None:
    """Kill `process` outright (SIGKILL, as the OOM killer would) as soon as `reached()` says so.

    Fails the test if the process ends first, or if `what` is not reached within 300 s."""
    deadline = time.monotonic() + 300
    while not reached():
        assert process.poll() is None and time.monotonic() < deadline, f"the process never reached {what}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
