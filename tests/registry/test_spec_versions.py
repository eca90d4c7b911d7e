"""Reproducible candidates: a changed track file adds a spec version, a candidate keeps the version it was made
with, and `graft registry show CANDIDATE --recipe` prints what reproduces it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from graftwork.storage import registry as rows
from graftwork.storage import releases, runs
from graftwork.storage.db import make_engine, session_scope
from graftwork.tasks.gate import GateRules
from graftwork.tasks.track import RecycleSpec, TrackSpec, load_track, spec_digest
from graftwork.terms import RecycleMode
from tests.registry.conftest import digest, track_spec

SHA = hashlib.sha1(b"01-M1").hexdigest()
DATA_SHA = "d" * 64


def _file(tmp_path: Path, steps: int) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q: 1+1?", "completion": "2"}\n')
    path = tmp_path / "demo.yaml"
    spec = track_spec("demo", {"kind": "hub-repos", "author": "org", "name_pattern": "m-*"})
    path.write_text(yaml.safe_dump({**spec, "finetune": {"data": str(data), "recipe": {"steps": steps}}}))
    return path


def _candidate(database_url: str, *, uri: str) -> None:
    """A candidate of the track's release 01-M1 made with the track's newest spec version, as a run records it."""
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        track = rows.get_track(session, name="demo")
        found = releases.Found("org/m-1", SHA, "01-M1", None, "01-M1", "c" * 64)
        release = releases.record(session, track=track, found=found)[0]
        run = runs.FinetuneRecord(
            recipe=track.spec["finetune"]["recipe"], steps=track.spec["finetune"]["recipe"]["steps"], device="cpu",
            processes=1, tokens=10, tokens_per_second=5.0, final_loss=0.5, loss_curve_blob=None,
            started_at=datetime(2026, 12, 2, tzinfo=UTC), finished_at=datetime(2026, 12, 2, 0, 0, 2, tzinfo=UTC),
            data_sha256=DATA_SHA,
        )  # fmt: skip
        runs.record_candidate(
            session, release=release, mode=RecycleMode.NONE, alpha=0.0, model_uri=uri, source_diff=None,
            finetune=run, carry_reason="none: plain fine-tuning", spec=rows.newest_spec(session, track=track),
        )  # fmt: skip
    engine.dispose()


def test_a_changed_track_file_adds_a_version_and_each_candidate_keeps_its_own(  # type: ignore[no-untyped-def]
    graft, database_url: str, tmp_path: Path
) -> None:
    first = _file(tmp_path, steps=30)
    assert (
        graft("track", "add", str(first))
        == "added track demo (hub-repos releases, iterative recycling), spec version 1\n"
    )
    assert (
        graft("track", "add", str(first))
        == "track demo (hub-repos releases, iterative recycling) unchanged, spec version 1\n"
    )
    _candidate(database_url, uri="/m/one")
    second = _file(tmp_path, steps=60)
    assert graft("track", "add", str(second)) == (
        "updated track demo (hub-repos releases, iterative recycling): spec version 2 (candidates made before keep "
        "theirs)\n"
    )
    _candidate(database_url, uri="/m/two")
    for number, steps in ((1, 30), (2, 60)):
        shown = graft("registry", "show", f"candidate-{number}", "--recipe").splitlines()
        spec = graft("track", "show", "demo")  # the newest version, for its hash below
        engine = make_engine(database_url)
        with session_scope(engine) as session:
            version = rows.get_candidate(session, ref=f"candidate-{number}").spec
            assert version is not None and version.version == number
            stored, version_hash = version.spec, version.sha256
        engine.dispose()
        assert shown[:5] == [
            f"candidate-{number} on track demo: what reproduces it",
            f"  base: release-1 (01-M1): org/m-1@{SHA} (content {'c' * 64})",
            "  start: the bare base (none: plain fine-tuning)",
            f"  fine-tune: recipe {json.dumps(stored['finetune']['recipe'])}; data sha256 {DATA_SHA}",
            f"  spec version {number} (sha256 {version_hash}), as `graft track add` takes it:",
        ]
        written = yaml.safe_load("\n".join(line[4:] for line in shown[5:]))  # the YAML a person writes
        assert TrackSpec.model_validate(written) == TrackSpec.model_validate(stored)
        assert "launch" not in written["finetune"] and "probe" not in written.get("recycle", {})  # defaults left out
        assert stored["finetune"]["recipe"]["steps"] == steps and version_hash == spec_digest(
            TrackSpec.model_validate(stored)
        )
        assert "steps: 60" in spec
    refused = graft("registry", "show", "release-1", "--recipe", code=1)
    assert "--recipe shows what reproduces a candidate, and release-1 is not one" in refused


def test_a_run_whose_spec_the_registry_lacks_records_it_as_a_new_version(registry) -> None:  # type: ignore[no-untyped-def]
    """A spec stored before versioning (migrated as version 1) is re-validated by a run with today's defaults: the
    candidate gets that spec as the next version, not a silent NULL, and the track's current spec stays."""
    old = {"name": "old", "finetune": {"recipe": {"steps": 30}}}
    run = {"name": "old", "finetune": {"recipe": {"steps": 30, "peft": None}}}
    with session_scope(registry.engine) as session:
        track, _ = rows.save_track(session, name="old", spec=old, digest=digest(old))
        first = rows.newest_spec(session, track=track)
        made = rows.spec_version(session, track=track, spec=run, digest=digest(run))
        again = rows.spec_version(session, track=track, spec=run, digest=digest(run))
        assert first is not None and (first.version, made.version, again.id) == (1, 2, made.id)
        assert made.spec == run and track.spec == old


class _LaterGate(GateRules):
    """The gate as a later release of Graftwork might have it: one more rule, off by default."""

    min_gain_per_gpu_hour: float | None = None


class _LaterRecycle(RecycleSpec):
    retries: int = 0


class _LaterTrack(TrackSpec):
    """A track as a later release might validate it: new fields with defaults, at the top and nested."""

    recycle: _LaterRecycle = _LaterRecycle()
    gate: _LaterGate
    owner: str = "nobody"


def test_a_field_added_with_a_default_keeps_every_old_spec_version(tmp_path: Path) -> None:
    spec = load_track(_file(tmp_path, steps=30))
    later = _LaterTrack.model_validate(spec.model_dump())
    assert later.owner == "nobody" and later.gate.min_gain_per_gpu_hour is None and later.recycle.retries == 0
    assert spec_digest(later) == spec_digest(spec)
    for changed in ({"owner": "ml-team"}, {"gate": {**spec.gate.model_dump(), "min_gain_per_gpu_hour": 0.1}}):
        assert spec_digest(_LaterTrack.model_validate({**spec.model_dump(), **changed})) != spec_digest(spec)


def test_a_default_written_out_is_the_same_version(tmp_path: Path) -> None:
    path = _file(tmp_path, steps=30)
    implicit = load_track(path)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "channel": "production", "recycle": {"mode": "iterative", "alpha": 1.0}}))
    explicit = load_track(path)
    assert explicit == implicit and spec_digest(explicit) == spec_digest(implicit)
    path.write_text(yaml.safe_dump({**data, "recycle": {"alpha": 0.5}}))
    assert spec_digest(load_track(path)) != spec_digest(implicit)
