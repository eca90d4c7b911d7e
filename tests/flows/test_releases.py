"""Algorithm 1 under real conditions, through Prefect on the test bed: releases run in their source's order
and carry the previous release's Δ, a failed run or dispatch is run again and never lost, a release whose
predecessor is not done waits, runs of one release in two modes share nothing, every track is watched."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import StateType
from sqlalchemy import select

from graftwork.errors import ReleaseOrderError
from graftwork.flows import recycle
from graftwork.flows.watch import Pass, watch_all_tracks, watch_releases
from graftwork.operations.settings import Workspace
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, Promotion, Release
from graftwork.tasks.testbed import Testbed
from graftwork.terms import CandidateKind, RecycleMode, ReleaseState
from tests.flows.conftest import graft, kill_when

pytestmark = pytest.mark.slow


def _track(folder: Path, testbed: Testbed, *, name: str, steps: int = 20, **recycle: object) -> Path:
    """A track over an empty release directory, registered; returns the release directory."""
    release_dir = folder / f"{name}-releases"
    release_dir.mkdir(parents=True)
    spec = {
        "name": name,
        "source": {"kind": "local", "release_dir": str(release_dir)},
        "finetune": {"data": str(testbed.train_data), "recipe": {"steps": steps, "seed": 0}},
        "recycle": {"mode": "iterative", "alpha": 1.0, **recycle},
        "eval": {"tasks": [testbed.generate_task], "task_dirs": [str(testbed.task_dir)], "limit": 30},
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}], "beat_base_by": 0.0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert f"added track {name}" in graft("track", "add", str(path))
    return release_dir


def _publish(release_dir: Path, name: str, model: Path) -> None:
    (release_dir / name).symlink_to(model, target_is_directory=True)


def _by_ref(track: str) -> dict[str, tuple[Release, Candidate | None]]:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        found = {}
        for release in releases.in_order(session, track=rows.get_track(session, name=track)):
            made = session.scalars(select(Candidate).where(Candidate.release_id == release.id).order_by(Candidate.id))
            found[release.ref or ""] = (release, made.first())
        return found


def _backoff_over(release_id: int) -> None:
    """Move the failed release's next run into the past, as an hour of waiting would."""
    with session_scope(Workspace.from_settings().registry().engine) as session:
        row = releases.status(session, release=session.get(Release, release_id))  # type: ignore[arg-type]
        assert row.retry_at is not None and row.retry_at > datetime.now(UTC) + timedelta(minutes=59)
        row.retry_at = datetime.now(UTC) - timedelta(seconds=1)


def _delta_of(candidate: Candidate) -> Diff:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        return session.scalars(select(Diff).where(Diff.candidate_id == candidate.id)).one()


def test_releases_run_in_their_sources_order_and_carry_the_previous_releases_delta(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    """03-M4 carries 02-M3's Δ, the release before it in the source's order, though 01-M2 was published
    (backfilled) after 02-M3 and its Δ registered last; and a run of 03-M4 in another mode makes another
    candidate in another working folder."""
    release_dir = _track(tmp_path, testbed, name="order")
    _publish(release_dir, "02-M3", testbed.releases[2])
    assert "track order: 1 new release(s), 1 run" in graft("track", "watch", "order")
    _publish(release_dir, "01-M2", testbed.releases[1])
    assert "track order: 1 new release(s), 1 run" in graft("track", "watch", "order")
    _publish(release_dir, "03-M4", testbed.releases[3])
    assert "track order: 1 new release(s), 1 run" in graft("track", "watch", "order")

    found = _by_ref("order")
    assert list(found) == ["01-M2", "02-M3", "03-M4"]
    (_, first), (_, second), (latest, third) = found.values()
    assert first is not None and second is not None and third is not None
    assert (
        first.carry_reason
        == second.carry_reason
        == "none: the track's first release is fine-tuned from its base (Algorithm 1)"
    )
    assert third.source_diff_id == _delta_of(second).id != _delta_of(first).id
    assert third.carry_reason == (
        f"diff-{_delta_of(second).id}, the Δ of candidate-{second.id} of release-{second.release_id} (02-M3) "
        "(the release before this one in the track's order)"
    )
    assert Path(third.model_uri).parent.name == "iterative-a1"

    recycle.recycle_then_finetune(track="order", release_id=latest.id, mode=RecycleMode.NONE)
    with session_scope(Workspace.from_settings().registry().engine) as session:
        made = list(session.scalars(select(Candidate).where(Candidate.release_id == latest.id).order_by(Candidate.id)))
    assert [c.mode for c in made] == [RecycleMode.ITERATIVE, RecycleMode.NONE]
    assert made[0].model_uri != made[1].model_uri and Path(made[1].model_uri).parent.name == "none"


def test_a_failed_run_or_dispatch_is_run_again_and_a_later_release_waits_for_it(
    data_dir: Path, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_dir = _track(tmp_path, testbed, name="again")
    _publish(release_dir, "01-M2", testbed.releases[1])
    _publish(release_dir, "02-M3", testbed.releases[2])
    real_finetune, calls = recycle.finetune, []

    def flaky(**kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(kwargs["model_dir"])
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return real_finetune(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(recycle, "finetune", flaky)
    monkeypatch.setenv("GRAFT_RETRY_BACKOFF_SECONDS", "3600")
    error = graft("track", "watch", "again", code=1)
    assert "CUDA out of memory" in error
    first, second = (release for release, _ in _by_ref("again").values())
    with session_scope(Workspace.from_settings().registry().engine) as session:
        row = releases.status(session, release=session.get(Release, first.id))  # type: ignore[arg-type]
        assert (row.state, row.attempts, row.detail) == (ReleaseState.FAILED, 1, "RuntimeError: CUDA out of memory")
        assert releases.status(session, release=session.get(Release, second.id)).state is ReleaseState.DISCOVERED  # type: ignore[arg-type]
    with pytest.raises(
        ReleaseOrderError, match=r"release-\d+ \(02-M3\) carries from release-\d+ \(01-M2\), which is failed"
    ):
        recycle.recycle_then_finetune(track="again", release_id=second.id)
    with session_scope(Workspace.from_settings().registry().engine) as session:  # refused, not failed: it waits
        row = releases.status(session, release=session.get(Release, second.id))  # type: ignore[arg-type]
        assert (row.state, row.attempts) == (ReleaseState.DISCOVERED, 0)

    waiting = graft("track", "watch", "again")  # within the backoff: nothing runs, and it says why
    assert "track again: 0 new release(s), 0 run" in waiting
    assert (
        f"waiting: release-{first.id} (01-M2) is failed (RuntimeError: CUDA out of memory), next run after" in waiting
    )
    _backoff_over(first.id)
    assert "track again: 0 new release(s), 2 run" in graft("track", "watch", "again")
    # 01-M2 again from its base, then 02-M3 from 02-M3 + Δ of 01-M2.
    assert [Path(c).name for c in calls] == ["01-M2", "01-M2", "transferred"]
    assert second.revision[:12] in str(calls[2])

    # A failed dispatch (no recycle deployment) is not lost either: the release waits, and runs once retried.
    _publish(release_dir, "03-M4", testbed.releases[3])
    dispatched = watch_releases(track="again", dispatch="deployment")
    assert dispatched.failed is not None and dispatched.failed.endswith(
        "its dispatch failed: the deployment recycle-then-finetune/recycle-then-finetune does not exist: serve it "
        "(`graft serve`) or deploy deployments/prefect.yaml (`prefect deploy --all`)"
    )
    third, _ = _by_ref("again")["03-M4"]
    with session_scope(Workspace.from_settings().registry().engine) as session:
        row = releases.status(session, release=session.get(Release, third.id))  # type: ignore[arg-type]
        assert row.state is ReleaseState.FAILED and row.attempts == 1 and row.detail.startswith("its dispatch failed")  # type: ignore[union-attr]
    shown = graft("track", "show", "again")
    assert shown.endswith(
        f"releases, in the source's order:\n  release-{first.id} (01-M2): done\n  release-{second.id} (02-M3): done\n"
        f"  release-{third.id} (03-M4): failed ({row.detail}), next run after {row.retry_at:%H:%M:%S} UTC\n"  # type: ignore[union-attr]
    )
    assert f"release-{third.id} (03-M4) runs again at the track's next watcher pass" in graft(
        "track", "retry", "again", "03-M4"
    )
    assert "track again: 0 new release(s), 1 run" in graft("track", "watch", "again")
    newest = _by_ref("again")["03-M4"][1]
    assert newest is not None

    # Backporting: the newest Δ onto the oldest release, recorded as its backport, carried by nothing.
    said = graft("backport", "again", "--to", "01-M2")
    with session_scope(Workspace.from_settings().registry().engine) as session:
        made = list(session.scalars(select(Candidate).where(Candidate.release_id == first.id).order_by(Candidate.id)))
        assert [c.kind for c in made] == [CandidateKind.RECYCLE, CandidateKind.BACKPORT]
        assert releases.status(session, release=session.get(Release, first.id)).state is ReleaseState.DONE  # type: ignore[arg-type]
    ported, delta = made[1], _delta_of(newest)
    assert f"backported the newest Δ of again onto 01-M2: candidate-{ported.id}" in said
    assert f"\n  backport, started from {ported.carry_reason}\n" in graft("registry", "show", f"candidate-{ported.id}")
    assert (ported.source_diff_id, ported.finetune_run_id) == (delta.id, None)
    assert ported.carry_reason == f"diff-{delta.id}, the track's newest Δ (of release-{third.id} (03-M4)), backported"
    assert _by_ref("again")["01-M2"][1].id == made[0].id  # type: ignore[union-attr]  # the release's own candidate is still Algorithm 1's
    with get_client(sync_client=True) as client:  # the backport's run is named for what it did
        named = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["again/backport-to-01-M2"]))
        )
    assert [run.state_type for run in named] == [StateType.COMPLETED]


def test_every_registered_track_is_watched_and_one_failing_stops_no_other(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    _track(tmp_path, testbed, name="one")
    assert set(watch_all_tracks(dispatch="inline")) == {"one"}
    gone = _track(tmp_path, testbed, name="two")  # added later, as to a running `graft serve`
    _track(tmp_path, testbed, name="three")
    gone.rmdir()  # its watcher pass looks for nothing and says why: its release directory is missing
    passes = watch_all_tracks(dispatch="inline")
    assert set(passes) == {"one", "two", "three"} and passes["one"].failed is passes["three"].failed is None
    missing = f"Release directory {gone} does not exist; create it or fix the track's release_dir."
    assert passes["two"] == Pass(failed=missing)


def test_track_add_checks_the_data_files(data_dir: Path, testbed: Testbed, tmp_path: Path) -> None:
    spec = yaml.safe_load(Path(__file__).parents[2].joinpath("deployments", "tracks", "testbed-demo.yaml").read_text())
    cases = {
        "missing": (tmp_path / "nowhere.jsonl", None, "error: fine-tuning data {data} cannot be read"),
        "broken": (
            tmp_path / "broken.jsonl",
            '{"prompt": "a", "completion": "b"}\n{oops\n',
            "error: {data}:2 is not JSON",
        ),
        "no-tasks": (testbed.train_data, None, "error: track no-tasks: eval task folder {tasks} does not exist"),
    }
    for name, (data, text, message) in cases.items():
        if text is not None:
            data.write_text(text)
        tasks = tmp_path / "no-such-tasks" if name == "no-tasks" else testbed.task_dir
        path = tmp_path / f"{name}.yaml"
        track = {**spec, "name": name, "finetune": {**spec["finetune"], "data": str(data)}}
        path.write_text(yaml.safe_dump({**track, "eval": {**spec["eval"], "task_dirs": [str(tasks)]}}))
        error = graft("track", "add", str(path), code=1)
        assert message.format(data=data, tasks=tasks) in error and "Traceback" not in error
    assert "no tracks yet" in graft("track", "list")


def test_a_killed_watcher_is_finished_by_the_next_one(
    data_dir: Path, database_url: str, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graft track watch`, killed outright (and its Prefect server with it), on SQLite while it
    fine-tunes, on PostgreSQL once its Δ is registered (while it evaluates): the next `graft track watch`
    finds the run dead, runs the release again, and the registry ends as after one uninterrupted run:
    one candidate, one Δ, one decision; no scratch folder is left."""
    monkeypatch.setenv("GRAFT_DATABASE_URL", database_url)
    release_dir = _track(tmp_path, testbed, name="killed", steps=200)
    _publish(release_dir, "01-M2", testbed.releases[1])
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1", "GRAFT_DATA_DIR": str(data_dir)}
    env["GRAFT_DATABASE_URL"] = database_url
    env.pop("PREFECT_API_URL", None)  # each watch starts (and owns) its own Prefect server, as a user's does
    command = [str(Path(sys.executable).parent / "graft"), "track", "watch", "killed"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    during_eval = database_url.startswith("postgresql")

    def reached() -> bool:
        if not during_eval:
            return bool(list(temp.glob("graft-finetune-*")))
        with session_scope(Workspace.from_settings().registry().engine) as session:
            return session.scalars(select(Diff)).first() is not None

    kill_when(first, reached, what="its fine-tune" if not during_eval else "its registered Δ")

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "track killed: 0 new release(s), 1 run" in again.stdout
    assert f"release-1 (01-M2): its run (process {first.pid} on" in again.stdout + again.stderr
    with session_scope(Workspace.from_settings().registry().engine) as session:
        (release,) = session.scalars(select(Release))
        assert releases.status(session, release=release).state is ReleaseState.DONE
        candidates = list(session.scalars(select(Candidate)))
        assert len(candidates) == 1 and len(list(session.scalars(select(Diff)))) == 1
        assert len(list(session.scalars(select(Promotion)))) == 1
    assert list(temp.glob("graft-finetune-*")) == []
