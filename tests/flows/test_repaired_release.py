"""A release is its bytes: a local release whose files are repaired in place becomes a new release, which
supersedes the failed one and runs in its place; a run of the failed one is refused, and every candidate is
recorded under the sha of the files it was made from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from graftwork.errors import ReleaseChangedError
from graftwork.flows import recycle
from graftwork.operations.settings import Workspace
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, Promotion, Release
from graftwork.tasks.hub import content_revision
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ReleaseState
from tests.flows.conftest import graft

pytestmark = pytest.mark.slow


def _track(folder: Path, testbed: Testbed, *, name: str) -> Path:
    """A local track over an empty release directory, registered; returns the release directory."""
    release_dir = folder / f"{name}-releases"
    release_dir.mkdir(parents=True)
    spec = {
        "name": name,
        "source": {"kind": "local", "release_dir": str(release_dir)},
        "finetune": {"data": str(testbed.train_data), "recipe": {"steps": 10, "seed": 0}},
        "eval": {"tasks": [testbed.generate_task], "task_dirs": [str(testbed.task_dir)], "limit": 20},
        "gate": {"metrics": [{"task": testbed.generate_task, "metric": "exact_match"}], "beat_base_by": -1.0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert f"added track {name}" in graft("track", "add", str(path))
    return release_dir


def _rows() -> tuple[list[Release], list[Candidate], int, int]:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        found = list(session.scalars(select(Release).order_by(Release.id)))
        for release in found:
            releases.status(session, release=release)  # loaded with the release, for the asserts below
        made = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        diffs = len(list(session.scalars(select(Diff))))
        return found, made, diffs, len(list(session.scalars(select(Promotion))))


def _state(release: Release) -> tuple[ReleaseState, str | None]:
    with session_scope(Workspace.from_settings().registry().engine) as session:
        row = releases.status(session, release=session.get(Release, release.id))  # type: ignore[arg-type]
        return row.state, row.detail


def test_a_release_repaired_in_place_supersedes_the_failed_one_and_runs_once_under_its_own_sha(
    data_dir: Path, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAFT_RETRY_BACKOFF_SECONDS", "3600")  # the failed release would hold the track for an hour
    folder = _track(tmp_path, testbed, name="mend") / "01-M2"
    shutil.copytree(testbed.releases[1], folder)  # a copy: its bytes are changed in place below
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:8] + b"!" + good[9:])  # the header is no longer JSON
    assert "release-1's run failed" in graft("track", "watch", "mend", code=1)
    (broken,), made, _, _ = _rows()
    assert made == [] and _state(broken)[0] is ReleaseState.FAILED
    assert broken.revision == broken.content_key == content_revision(folder)  # the corrupt bytes' sha

    weights.write_bytes(good)  # repaired in place
    mended = content_revision(folder)
    assert mended != broken.revision
    # A run of the failed release now (a retry started before any watcher pass saw the repair) reads files that
    # are not those its sha names: refused, and nothing is recorded under it.
    with pytest.raises(ReleaseChangedError) as refused:
        recycle.recycle_then_finetune(track="mend", release_id=broken.id)
    assert str(refused.value) == (
        f"release-1 (01-M2): its files in {folder} changed since it was seen (sha {broken.revision[:12]} then, "
        f"{mended[:12]} now); the next watcher pass (`graft track watch mend`) records them as a new release, or put "
        "back the files it was seen with. Nothing is recorded under release-1 (01-M2) from them."
    )
    assert _rows()[1] == [] and _state(broken)[0] is ReleaseState.FAILED

    # The next pass records the repair as release-2, which supersedes release-1 and runs at once, not waiting
    # behind release-1's backoff.
    assert "track mend: 1 new release(s), 1 run" in graft("track", "watch", "mend")
    (_, repaired), made, diffs, promotions = _rows()
    why = "its files changed since it was seen; release-2 (01-M2) holds them now"
    assert _state(broken) == (ReleaseState.SUPERSEDED, why)
    assert _state(repaired)[0] is ReleaseState.DONE
    assert (repaired.ref, repaired.revision, repaired.content_key) == ("01-M2", mended, mended)
    assert [c.release_id for c in made] == [repaired.id] and (diffs, promotions) == (1, 1)

    assert graft("track", "retry", "mend", "release-1", code=1).strip() == (
        f"error: release-1 (01-M2) is superseded: {why} and runs in its place, so release-1 (01-M2) is never run "
        "again (`graft track show mend` shows both)."
    )
    assert graft("track", "show", "mend").endswith(
        f"releases, in the source's order:\n  release-1 (01-M2): superseded ({why})\n  release-2 (01-M2): done\n"
    )
    status = graft("track", "status", "mend").splitlines()
    assert status[2].split()[:3] == ["release-1", "(01-M2)", broken.revision[:12]]
    assert status[2].split()[3:] == ["superseded", "—", "—", "—", "—"]
    assert "track mend: 0 new release(s), 0 run" in graft("track", "watch", "mend")
    assert len(_rows()[1]) == 1  # one candidate for the one model its bytes name
