"""One data dir for every command: `graft --data-dir DIR COMMAND` reads and writes DIR's registry, whatever
GRAFT_DATA_DIR says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.tasks.testbed import Testbed

runner = CliRunner()


def test_every_command_takes_the_data_dir(tmp_path: Path, testbed: Testbed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_DATA_DIR", str(tmp_path / "elsewhere"))  # also restores what --data-dir sets
    monkeypatch.delenv("GRAFT_DATABASE_URL", raising=False)
    monkeypatch.delenv("GRAFT_BLOB_URL", raising=False)
    track = tmp_path / "t.yaml"
    track.write_text(yaml.safe_dump({
        "name": "mine", "source": {"kind": "local", "release_dir": str(tmp_path / "releases")},
        "finetune": {"data": str(testbed.train_data)},
        "eval": {"tasks": [testbed.generate_task], "task_dirs": [str(testbed.task_dir)]},
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}]},
    }))  # fmt: skip
    mine = tmp_path / "mine"
    added = runner.invoke(app, ["--data-dir", str(mine), "track", "add", str(track)])
    assert added.exit_code == 0, added.output
    assert (mine / "registry.db").is_file() and not (tmp_path / "elsewhere" / "registry.db").exists()
    listed = runner.invoke(app, ["--data-dir", str(mine), "track", "list"])
    assert listed.stdout.splitlines()[1].split()[:2] == ["mine", "local"]
    monkeypatch.setenv("GRAFT_DATA_DIR", str(tmp_path / "elsewhere"))
    assert "no tracks yet" in runner.invoke(app, ["track", "list"]).stdout
    assert "--data-dir" in runner.invoke(app, ["--help"]).stdout
