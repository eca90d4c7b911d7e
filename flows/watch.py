"""The watcher: find a track's new releases, record them, and start one recycle run for each.

`inline` dispatch runs them in this process, one after the other, in release order (the embedded
default); `deployment` starts runs of the recycle deployment on its work pool, each with the
idempotency key TRACK:SHA, so a release seen twice runs once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, tags, task
from prefect.deployments import run_deployment

from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.hub import ReleaseRef, discover_local, discover_refs, discover_repos
from .recycle import recycle_then_finetune
from .settings import Workspace
from .tracks import HubRefsSource, HubReposSource, LocalSource, TrackSpec, load_spec

RECYCLE_DEPLOYMENT = "recycle-then-finetune/recycle-then-finetune"
Dispatch = Literal["inline", "deployment"]


@task
def discover(spec: TrackSpec) -> list[ReleaseRef]:
    """The releases the track's source offers now, oldest first."""
    source = spec.source
    if isinstance(source, LocalSource):
        return discover_local(release_dir=source.release_dir)
    if isinstance(source, HubRefsSource):
        return discover_refs(repo_id=source.repo, ref_pattern=source.ref_pattern)
    assert isinstance(source, HubReposSource)
    return discover_repos(author=source.author, name_pattern=source.name_pattern)


@task
def record_releases(where: Workspace, track: str, found: list[ReleaseRef]) -> list[tuple[int, str]]:
    """Record the releases; return (id, sha) of those never seen before, in order."""
    new = []
    with session_scope(where.registry().engine) as session:
        row = rows.get_track(session, name=track)
        for ref in found:
            path = None if ref.path is None else str(ref.path)
            release, created = rows.record_release(
                session, track=row, repo_id=ref.repo_id, revision=ref.revision, ref=ref.ref, path=path
            )
            if created:
                new.append((release.id, release.revision))
    return new


@flow(name="watch-releases", log_prints=True)
def watch_releases(track: str, dispatch: Dispatch = "inline", data_dir: Path | None = None) -> list[int]:
    """Find a track's new releases and start one recycle run per new release; return their ids.

    `data_dir` replaces the settings' data dir for this run (and the runs it starts inline).
    """
    where = Workspace.at(data_dir)
    spec = load_spec(where.registry(), track=track)
    new = record_releases(where, track, discover(spec))
    print(f"track {track}: {len(new)} new release(s)")
    for release_id, sha in new:
        with tags(f"track:{track}", f"release:{sha[:12]}"):
            if dispatch == "inline":
                recycle_then_finetune(track=track, release_id=release_id, data_dir=data_dir)
            else:
                run_deployment(
                    RECYCLE_DEPLOYMENT,
                    parameters={"track": track, "release_id": release_id},
                    idempotency_key=f"{track}:{sha}",
                    tags=[f"track:{track}", f"release:{sha[:12]}"],
                    timeout=0,
                )
    return [release_id for release_id, _ in new]
