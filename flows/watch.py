"""The watcher: one pass over a track records the releases its source offers, notices runs that died,
and starts the next release whose predecessor is done, so that releases are never lost and always run in
their source's order (each one carries the Δ of the one before it).

`inline` dispatch runs them here, one after the other, while one can start (the embedded default);
`deployment` starts one run of the recycle deployment with the idempotency key TRACK:SHA:ATTEMPT, and
that run starts the next pass when it is done. A release whose dispatch failed, or whose run failed or
died, is started again by a later pass (a failed run after a backoff, up to the retry limit). A local
release whose folder's files changed in place is recorded as a new release, which supersedes the old one.
A track whose source is not ready (its release directory is missing) is skipped with one sentence that says
why, no traceback.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger, tags, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed
from sqlalchemy.orm import Session

from ..errors import GraftError
from ..fs import process_alive
from ..operations import events
from ..operations.lifecycle import RECYCLE_DEPLOYMENT, why_not_started
from ..operations.names import release_ref, run_name, run_tags, tag_this_run, track_tag
from ..operations.settings import Workspace
from ..operations.tracks import load_spec
from ..storage import registry as rows
from ..storage import releases
from ..storage.db import session_scope
from ..storage.models import ReleaseStatus, Track
from ..tasks.hub import ReleaseRef, release_facts
from ..tasks.track import TrackSpec
from ..terms import Dispatch, ReleaseState
from .recycle import recycle_then_finetune

DEAD_STATES = frozenset({"FAILED", "CRASHED", "CANCELLED", "CANCELLING"})
LIVE_STATES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED"})


@dataclass(frozen=True)
class Pass:
    """What a watcher pass did: the releases it recorded, those it started, the run that failed (its
    release is run again by a later pass) or why the pass looked for none (its source is not ready), and why
    the rest wait."""

    new: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    failed: str | None = None
    waiting: str | None = None


@task
def discover(spec: TrackSpec) -> list[ReleaseRef]:
    """The releases the track's source offers now."""
    return spec.source.discover()


@task
def record_releases(where: Workspace, track: str, spec: TrackSpec, found: list[ReleaseRef]) -> list[int]:
    """Record the releases never seen before, with their place in the source's order and their content
    key (a release whose model files are those of the one before it is recorded as skipped), and that each
    local one holds its folder's files now (`releases.holds_its_folder`: a release of the same folder with
    other files, not yet done, is superseded by it); return the ids of the new ones."""
    with session_scope(where.registry().engine) as session:
        seen = releases.known(session, track=rows.get_track(session, name=track))
    fresh = [ref for ref in found if (ref.repo_id, ref.revision) not in seen]
    facts = [release_facts(release=ref, order=spec.source.order) for ref in fresh]
    new = []
    with session_scope(where.registry().engine) as session:
        row = rows.get_track(session, name=track)
        for ref, fact in zip(fresh, facts, strict=True):
            path = None if ref.path is None else str(ref.path)
            found_as = releases.Found(ref.repo_id, ref.revision, ref.ref, path, fact.position, fact.content_key)
            release, created = releases.record(session, track=row, found=found_as)
            if created:
                new.append(release.id)
                events.release_discovered(track=track, repo=ref.repo_id, revision=ref.revision, ref=ref.ref)
        for ref in found:
            holder = releases.recorded(session, track=row, repo_id=ref.repo_id, revision=ref.revision)
            if ref.path is None or holder is None:
                continue
            for gone in releases.holds_its_folder(session, release=holder):
                get_run_logger().info(
                    "track %s: %s is superseded: %s", track, releases.label(gone), releases.superseded_because(holder)
                )
    return new


@task
def reconcile(where: Workspace, track: str) -> list[str]:
    """Mark as failed the releases whose run died: its process on this machine is gone, its Prefect flow
    run ended without finishing it, or it stopped reporting. Returns what was found, for the log."""
    policy, now, found = where.retry_policy(), datetime.now(UTC), []
    with session_scope(where.registry().engine) as session:
        for release in releases.in_order(session, track=rows.get_track(session, name=track)):
            row = releases.status(session, release=release)
            if row.state not in releases.LIVE:
                continue
            why = _why_dead(row, now=now, stale_after=policy.stale_after)
            if why is not None:
                releases.fail(session, release=release, detail=why, policy=policy, died=True)
                found.append(f"{releases.label(release)}: {why}")
                if row.flow_run_id is not None:
                    _crash_flow_run(row.flow_run_id, why=why)
    return found


def _why_dead(row: ReleaseStatus, *, now: datetime, stale_after: timedelta) -> str | None:
    host, _, pid = (row.runner or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
        return f"its run (process {pid} on {host}) died"
    if row.flow_run_id is not None:
        state = _flow_run_state(row.flow_run_id)
        if state in DEAD_STATES:
            return f"its flow run {row.flow_run_id} ended {state.lower()}"
    if row.heartbeat_at is not None and now - row.heartbeat_at > stale_after:
        return f"its run stopped reporting at {row.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
    return None


def _flow_run_state(flow_run_id: str) -> str | None:
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            return "CANCELLED"
    return None if run.state is None else run.state.type.value


def _crash_flow_run(flow_run_id: str, *, why: str) -> None:
    """Mark a dead run's flow run crashed if Prefect still thinks it is live, so that the Prefect UI tells
    the truth and the deployment's and pool's concurrency slots it holds are freed for its next attempt."""
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            return
        if run.state is not None and run.state.type.value in LIVE_STATES:
            client.set_flow_run_state(UUID(flow_run_id), state=Crashed(message=f"Graftwork: {why}"), force=True)


@task
def next_release(where: Workspace, track: str) -> tuple[int, ReleaseRef, int] | str:
    """(id, release, attempt) of the release to start now, or why none can start (empty: all are done)."""
    with session_scope(where.registry().engine) as session:
        row = rows.get_track(session, name=track)
        release = releases.next_to_run(session, track=row, policy=where.retry_policy(), now=datetime.now(UTC))
        if release is not None:
            return release.id, release_ref(release), releases.status(session, release=release).attempts + 1
        return _waiting(session, track=row, policy=where.retry_policy())


def _waiting(session: Session, *, track: Track, policy: releases.RetryPolicy) -> str:
    for release in releases.in_order(session, track=track):
        row = releases.status(session, release=release)
        if row.state not in releases.FINISHED:
            return f"{releases.label(release)} is {releases.describe(row, policy=policy)}"
    return ""


@task
def dispatch_run(where: Workspace, track: str, release_id: int, release: ReleaseRef, attempt: int) -> str | None:
    """Start the recycle deployment's run for a release (named and tagged by its track and release while it
    waits for a worker), marking it dispatched; a failed dispatch marks it failed (to be dispatched again
    after the backoff) and returns why. The run is a run of its own, not a subflow of this pass: it outlives
    the pass, and Prefect suspends only top-level runs (a gate waiting for a person's approval does)."""
    try:
        run = cast(
            FlowRun,
            run_deployment(
                RECYCLE_DEPLOYMENT,
                parameters={"track": track, "release_id": release_id, "chain": True},
                flow_run_name=run_name(track=track, release=release),
                idempotency_key=f"{track}:{release.revision}:{attempt}",
                tags=run_tags(track=track, release=release),
                timeout=0,
                as_subflow=False,
            ),
        )
    except Exception as e:
        why = f"its dispatch failed: {why_not_started(e, deployment=RECYCLE_DEPLOYMENT)}"
        with session_scope(where.registry().engine) as session:
            row = rows.get_release(session, release_id=release_id)
            releases.fail(session, release=row, detail=why, policy=where.retry_policy(), died=False, counts=True)
        return f"release-{release_id}: {why}"
    with session_scope(where.registry().engine) as session:
        row = rows.get_release(session, release_id=release_id)
        releases.mark(session, release=row, state=ReleaseState.DISPATCHED, flow_run_id=str(run.id))
    return None


@flow(name="watch-releases", flow_run_name="{track}/watch", log_prints=True)
def watch_releases(track: str, dispatch: Dispatch = Dispatch.INLINE, data_dir: Path | None = None) -> Pass:
    """One watcher pass over a track (see the module's docstring), named `TRACK/watch` and tagged with its
    track however it was started.

    `data_dir` replaces the settings' data dir for this pass (and the runs it starts inline).
    """
    tag_this_run(track_tag(track))
    where = Workspace.at(data_dir)
    spec = load_spec(where.registry(), track=track)
    try:
        spec.source.ready()
    except GraftError as e:  # a person must fix it: one line in the run's log, not Prefect's traceback
        get_run_logger().error("track %s: %s", track, e)
        return Pass(failed=str(e))
    new = record_releases(where, track, spec, discover(spec))
    print(f"track {track}: {len(new)} new release(s)")
    for died in reconcile(where, track):
        print(f"track {track}: {died}; it is run again")
    started: list[int] = []
    failed = None
    while not isinstance(chosen := next_release(where, track), str):
        release_id, release, attempt = chosen
        if started and started[-1] == release_id:
            chosen = f"release-{release_id}'s run returned without finishing it"
            break
        started.append(release_id)
        how = "dispatches" if dispatch is Dispatch.DEPLOYMENT else "runs"
        name = run_name(track=track, release=release)
        get_run_logger().info("track %s: %s %s (release-%d, attempt %d)", track, how, name, release_id, attempt)
        with tags(*run_tags(track=track, release=release)):
            if dispatch is Dispatch.DEPLOYMENT:
                failed = dispatch_run(where, track, release_id, release, attempt)
                break  # that run starts the next pass when it is done
            try:
                recycle_then_finetune(track=track, release_id=release_id, data_dir=data_dir)
            except Exception as e:  # recorded as the release's failure: a later pass runs it again
                failed = f"release-{release_id}'s run failed: {type(e).__name__}: {e}"
                get_run_logger().error("track %s: %s", track, failed)
                break
    waiting = None if isinstance(chosen, tuple) else chosen or None
    if waiting:
        get_run_logger().info("track %s: waiting: %s", track, waiting)
    return Pass(new=new, started=started, failed=failed, waiting=waiting)


@flow(name="watch-all-tracks", flow_run_name="watch-all", log_prints=True)
def watch_all_tracks(dispatch: Dispatch = Dispatch.DEPLOYMENT, data_dir: Path | None = None) -> dict[str, Pass]:
    """A watcher pass over every registered track, as the registry lists them now (so a track added after
    `graft serve` started is watched from its next interval on); one track's failure does not stop the others."""
    where = Workspace.at(data_dir)
    with session_scope(where.registry().engine) as session:
        names = [t.name for t in rows.list_tracks(session)]
    passes = {}
    for name in names:
        try:
            passes[name] = watch_releases(track=name, dispatch=dispatch, data_dir=data_dir)
        except Exception as e:
            get_run_logger().error("track %s: the watcher pass failed: %s", name, e)
    return passes
