"""Hub webhook deliveries: find the tracks that watch a delivery's repo, and start their watchers once.

A delivery is identified by `delivery_key`, a hash of what it says (repo, event, head commit and
updated refs), so the Hub replaying it, or sending it twice, gives the same key. Each (delivery,
track) pair is recorded as one `webhook_deliveries` row, committed before the track's run is started:
a run is started only by the request that inserts the row, and when starting fails the row is removed
again, so a redelivery tries again. The run's idempotency key is the row's key, so a run that was
started just before a crash is not started twice by Prefect either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from prefect.deployments import run_deployment
from sqlalchemy.orm import Session

from ..errors import RunStartError, TrackError
from ..operations.lifecycle import WATCH_DEPLOYMENT, why_not_started
from ..operations.tracks import spec_of
from ..storage import Registry
from ..storage import registry as rows
from ..storage.db import session_scope
from ..storage.models import Track
from ..terms import Dispatch
from .hub_events import HubEvent, delivery_key, release_refs

StartRun = Callable[[str, str], None]
"""Starts a track's run: called with the track name and an idempotency key."""

RELEASE_EVENTS = frozenset({("create", "repo"), ("update", "repo"), ("update", "repo.content")})
"""The (action, scope) pairs that can bring a new release: a new repo, or new commits, branches or tags."""

log = logging.getLogger("graftwork.webhook")


def tracks_watching(session: Session, *, repo_id: str, refs: Collection[str] | None = None) -> list[Track]:
    """The registered tracks whose source watches the Hub repo `repo_id`, in name order.

    A `hub-repos` source watches the repos of its `author` whose name (after the slash) matches its
    `name_pattern`; a `hub-refs` source watches its `repo`, and when `refs` is given only if one of them
    (a branch or tag name, with or without `refs/heads/` or `refs/tags/`) matches its `ref_pattern`.
    Patterns are globs, matched case-sensitively. Local sources watch nothing; a track whose stored spec
    no longer validates watches nothing either (and is logged).
    """
    watching = []
    for track in rows.list_tracks(session):
        try:
            spec = spec_of(track)
        except TrackError as e:
            log.warning("%s", e)
            continue
        if spec.source.watches(repo_id=repo_id, refs=refs):
            watching.append(track)
    return watching


@dataclass(frozen=True)
class Outcome:
    """What a delivery did: `started` the runs of `tracks`, nothing new (`duplicate`: their runs were
    started by an earlier delivery), or nothing at all (`ignored`, with the reason)."""

    status: Literal["started", "duplicate", "ignored"]
    key: str
    tracks: tuple[str, ...] = ()
    reason: str = ""


def handle_delivery(registry: Registry, *, event: HubEvent, start_run: StartRun) -> Outcome:
    """Record a delivery and start the run of every track that watches its repo, once per delivery.

    The (delivery, track) pairs are recorded first, in one short transaction, and the runs started
    after it, so that a slow Prefect API never holds the database (SQLite's write lock, a PostgreSQL
    connection) and a burst of deliveries is answered and recorded in full. `start_run(track,
    idempotency_key)` is called once per new pair; a delivery that no track watches (or a non-model
    repo, or an event that brings no release) is recorded without a track and ignored.

    Raises:
        RunStartError: `start_run` failed for a track; the pairs whose runs were not started are
            removed again, so the Hub's redelivery tries again (a run started twice under one key is one
            run: the key is Prefect's idempotency key).
        DatabaseError: the registry database failed; the delivery is not recorded.
    """
    key = delivery_key(event)
    reason = _not_a_release(event)
    with session_scope(registry.engine) as session:
        tracks = [] if reason else tracks_watching(session, repo_id=event.repo_id, refs=event.new_refs)
        if not tracks:
            rows.record_delivery(session, key=key, payload=event.payload, track=None)
            return Outcome(status="ignored", key=key, reason=reason or _unwatched(session, event))
        names = tuple(track.name for track in tracks)
        fresh = []
        for track in tracks:
            row, new = rows.record_delivery(session, key=f"{key}:{track.id}", payload=event.payload, track=track)
            if new:
                fresh.append((track.name, row.key))
    for done, (track_name, row_key) in enumerate(fresh):
        try:
            start_run(track_name, row_key)
        except Exception as e:
            with session_scope(registry.engine) as session:
                rows.forget_deliveries(session, keys=[k for _, k in fresh[done:]])
            raise RunStartError(
                f"could not start the run of track {track_name} for {event.repo_id}: "
                f"{why_not_started(e, deployment=WATCH_DEPLOYMENT)}. "
                "Nothing was recorded; fix the cause and redeliver the webhook from the Hub.",
                track=track_name,
            ) from e
    if fresh:
        return Outcome(status="started", key=key, tracks=tuple(name for name, _ in fresh))
    return Outcome(status="duplicate", key=key, tracks=names)


def _unwatched(session: Session, event: HubEvent) -> str:
    """Why no track starts for a release event: no track watches the repo, or those that do watch other refs."""
    watchers = tracks_watching(session, repo_id=event.repo_id, refs=None)
    if not watchers:
        return f"no track watches {event.repo_id}"
    refs = ", ".join(event.new_refs or []) or "no ref"
    names = ", ".join(t.name for t in watchers)
    return f"tracks {names} watch {event.repo_id}, but not {refs} (see their ref patterns)"


def _not_a_release(event: HubEvent) -> str:
    if event.repo_type != "model":
        return f"{event.repo_id} is a {event.repo_type} repo; tracks watch model repos"
    if (event.action, event.scope) not in RELEASE_EVENTS:
        return f"a {event.scope} {event.action} event brings no new release"
    refs = [ref for ref, _ in event.updated_refs]
    if refs and not release_refs(refs):
        return f"only {', '.join(refs)} changed: pull requests and refs that are not branches or tags bring no release"
    return ""


def start_watcher(track: str, idempotency_key: str) -> None:
    """Start a watcher pass over the track (the deployment `watch-releases/watch-releases`) and return at once.

    Prefect starts one run per idempotency key, so calling this twice with one key starts one run.

    Raises:
        prefect.exceptions.ObjectNotFound: the deployment does not exist; serve it (`graft serve`) or
            deploy `deployments/prefect.yaml`.
    """
    run_deployment(
        WATCH_DEPLOYMENT,
        parameters={"track": track, "dispatch": Dispatch.DEPLOYMENT},
        idempotency_key=idempotency_key,
        timeout=0,
    )
