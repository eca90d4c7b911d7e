"""Read-only commands answer at once: `graft --help`, the track, history, registry and compare commands (and the
hand decisions: promote, rollback, approve, reject) load none of the training and evaluation stack (torch,
transformers, peft, lm-eval, datasets) and no module of `graftwork.flows`: they call `graftwork.operations`.
Each runs in a fresh interpreter, as a user's shell starts it, on a registry with a track; the test fails when
such a module is in `sys.modules` after the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graftwork.tasks.testbed import Testbed
from tests.flows.conftest import write_track
from tests.service import GRAFT, child_env

HEAVY = ("torch", "transformers", "peft", "lm_eval", "datasets", "graftwork.flows")
# Runs the command in this interpreter as `graft` would, then says which of HEAVY it loaded.
PROBE = f"""
import json, sys
from graftwork.deployments.cli import app
try:
    app(sys.argv[1:], prog_name="graft")
except SystemExit:
    pass
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)
"""
COMMANDS = [
    "--help",
    "track list",
    "track show bed",
    "track status bed",
    "track list --json",
    "history bed",
    "registry list",
    "registry lineage bed",
    "registry show release-1",
    "compare release-1 candidate-1",
    "promote candidate-1",
    "rollback bed",
    "approve candidate-1",
    "reject candidate-1 --reason no",
]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, testbed: Testbed) -> dict[str, str]:
    """The environment of a data dir whose registry holds one local track."""
    root = tmp_path_factory.mktemp("readonly")
    env = child_env(GRAFT_DATA_DIR=str(root / "data"))
    track = write_track(root, testbed, name="bed", releases=(1,))
    done = subprocess.run([str(GRAFT), "track", "add", str(track)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_command_loads_no_ml_stack(registered: dict[str, str], command: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command.split()], env=registered, cwd=tmp_path, capture_output=True, text=True
    )
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert loaded == [], f"`graft {command}` loaded {loaded}:\n{done.stdout}\n{done.stderr}"
