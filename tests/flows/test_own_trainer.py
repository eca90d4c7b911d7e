"""A track's own training command through the product: `graft track add`, then a watcher pass. The shipped TRL
example trains the test bed's release on the CPU, and its output is registered, carried and gated like the
built-in recipe's; a command that fails fails its release with the last lines of its stderr, records nothing,
and the release runs again once the command is fixed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from graftwork.flows.watch import watch_releases
from graftwork.operations.settings import Workspace
from graftwork.operations.shipped import shipped_file
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, FinetuneRun, Promotion
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ActorKind, ReleaseState
from tests.flows.conftest import graft, write_track


def _own_track(folder: Path, testbed: Testbed, argv: list[str]) -> Path:
    path = write_track(folder, testbed, name="own", releases=(1,))
    spec = yaml.safe_load(path.read_text())
    spec["finetune"] = {"data": spec["finetune"]["data"], "command": {"argv": argv, "timeout_minutes": 10}}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_shipped_trl_trainer_makes_the_candidate_that_is_registered_and_gated(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    trainer = shipped_file("trainers", "trl_sft.py")
    argv = [
        sys.executable,
        str(trainer),
        "--model",
        "{start}",
        "--data",
        "{data}",
        "--out",
        "{output}",
        "--steps",
        "20",
    ]
    graft("track", "add", str(_own_track(tmp_path, testbed, argv)))
    assert "track own: 1 new release(s), 1 run" in graft("track", "watch", "own")
    with session_scope(Workspace.from_settings().registry().engine) as session:
        [candidate] = session.scalars(select(Candidate))
        run = session.get(FinetuneRun, candidate.finetune_run_id)
        assert run is not None
        assert run.recipe["command"]["argv"][1] == str(trainer)
        assert sorted(run.recipe["command"]["files"]) == sorted([sys.executable, str(trainer)])  # their sha256s
        assert run.steps == 20 and run.final_loss is not None and run.device == "cpu"
        assert session.scalars(select(Diff).where(Diff.candidate_id == candidate.id)).one()
        [decision] = session.scalars(select(Promotion))
        assert decision.actor_kind is ActorKind.GATE and decision.reasons  # gated: the decision says why
        assert candidate.id in (decision.to_candidate_id, decision.from_candidate_id)
    work = Path(candidate.model_uri).parent
    assert "train_runtime" in (work / "trainer.log").read_text()
    shown = graft("registry", "show", f"candidate-{candidate.id}", "--recipe")
    assert "trl_sft.py" in shown and "{output}" in shown


def test_a_failing_command_fails_its_release_with_its_stderr_and_records_nothing(
    data_dir: Path, testbed: Testbed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\nprint('loading the model', file=sys.stderr)\n"
        "print('CUDA out of memory', file=sys.stderr)\nsys.exit(2)\n"
    )
    argv = [sys.executable, "train.py", "{start}", "{output}"]
    graft("track", "add", str(_own_track(tmp_path, testbed, argv)))
    done = watch_releases(track="own")
    assert done.failed is not None and done.failed.endswith("loading the model\nCUDA out of memory")
    [failed] = [r for r in caplog.records if r.getMessage().startswith("Task run failed with exception: Trainer")]
    assert failed.name == "prefect.task_runs" and failed.exc_info is None  # its sentence, without the traceback
    with session_scope(Workspace.from_settings().registry().engine) as session:
        assert list(session.scalars(select(Candidate))) == list(session.scalars(select(Diff))) == []
        [release] = releases.in_order(session, track=rows.get_track(session, name="own"))
        status = releases.status(session, release=release)
        work = data_dir / "runs" / "own" / release.revision[:12] / "none"
        assert (status.state, status.detail) == (
            ReleaseState.FAILED,
            f"TrainerCommandError: the training command exited with status 2; its log: {work / 'trainer.log'}. "
            "The last lines of its stderr:\nloading the model\nCUDA out of memory",
        )
    assert (work / "trainer.log").read_text() == "loading the model\nCUDA out of memory\n"
    assert not (work / "candidate").exists()

    # Fixed (a new spec version: the script's bytes are part of it) and retried, the release runs.
    script.write_text("import shutil, sys\nshutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)\n")
    assert "spec version 2" in graft("track", "add", str(tmp_path / "own.yaml"))
    graft("track", "retry", "own", "01-M1")
    assert watch_releases(track="own").failed is None
    with session_scope(Workspace.from_settings().registry().engine) as session:
        assert len(list(session.scalars(select(Candidate)))) == 1
        assert releases.status(session, release=release).state is ReleaseState.DONE
