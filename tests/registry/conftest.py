"""Registry fixtures: every test runs once on SQLite and once on PostgreSQL, each on a fresh database
(`database_url`, from tests/databases.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.storage import Registry, releases, runs
from graftwork.storage import registry as rows
from graftwork.storage.blobs import BlobStore
from graftwork.storage.db import ensure_schema, make_engine, session_scope
from graftwork.storage.models import Candidate, Release, Track
from graftwork.tasks import engine
from graftwork.terms import RecycleMode
from tests.conftest import Family


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    """A migrated registry with a local blob store, holding tracks `t` and `u` (with empty specs: the
    registry stores specs as they are given; flows validate them)."""
    engine = make_engine(database_url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        track_named(session, "t")
        track_named(session, "u")
    yield Registry(engine=engine, store=BlobStore(str(tmp_path / "blobs")))
    engine.dispose()


def track_named(session: Session, name: str) -> Track:
    """The track `name`, created with an empty spec when it is not there."""
    existing = {t.name: t for t in rows.list_tracks(session)}
    return existing[name] if name in existing else rows.save_track(session, name=name, spec={}, digest=digest({}))[0]


def digest(spec: dict[str, Any]) -> str:
    """A version hash for a spec given as plain data (the registry takes it as given)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def record_release(
    session: Session, *, track: Track, repo_id: str, revision: str, ref: str | None = None
) -> tuple[Release, bool]:
    """Record a release as a watcher pass does (with its status row), ordered by its revision."""
    found = releases.Found(
        repo_id=repo_id, revision=revision, ref=ref, path=None, position=revision, content_key=revision
    )
    return releases.record(session, track=track, found=found)


def track_spec(name: str, source: dict[str, Any]) -> dict[str, Any]:
    """The smallest valid track spec around a release source, as a track's spec is stored."""
    return {
        "name": name,
        "source": source,
        "finetune": {"data": "/data/train.jsonl"},
        "eval": {"tasks": ["testbed_add"]},
        "gate": {"metrics": [{"task": "testbed_add", "metric": "exact_match"}]},
    }


def candidate(session: Session, release: Release, *, mode: RecycleMode, uri: str) -> Candidate:
    """A candidate of `release`, with no fine-tune run or source diff."""
    return runs.record_candidate(
        session, release=release, mode=mode, alpha=1.0, model_uri=uri, source_diff=None, finetune=None
    )


@pytest.fixture(scope="session")
def diff_dir(bf16_family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diff folder made by the engine from the bf16 family."""
    out = tmp_path_factory.mktemp("registry-diff") / "diff"
    engine.diff(finetuned=bf16_family.finetuned, base=bf16_family.base, out=out)
    return out


runner = CliRunner()


@pytest.fixture
def graft(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GRAFT_DATABASE_URL", database_url)
    monkeypatch.setenv("GRAFT_BLOB_URL", str(tmp_path / "blobs"))

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.stdout if code == 0 else result.stderr + result.stdout

    return run


def add_track(graft, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    source = {"kind": "hub-repos", "author": "org", "name_pattern": "m-*"}
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q: 1+1?", "completion": "2"}\n')
    path = tmp_path / f"{name}.yaml"
    spec = track_spec(name, source)
    path.write_text(yaml.safe_dump({**spec, "finetune": {"data": str(data)}}))
    assert f"added track {name}" in graft("track", "add", str(path))
