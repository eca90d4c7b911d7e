"""Hub webhook deliveries: find the tracks that watch a delivery's repo, and record one outbox row per track.

A delivery is identified by `delivery_key`, a hash of what it says (repo, event, head commit and
updated refs), so the Hub replaying it, or sending it twice, gives the same key. Each (delivery,
track) pair is recorded as one `webhook_deliveries` row, in one short transaction that the answer waits
for; the track's run is started afterwards, from the row, by the receiver's outbox (`outbox.Drainer`),
with the row's key as Prefect's idempotency key: a delivery recorded is a run started, exactly once,
however often it is sent and whenever the receiver is restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal, cast

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from sqlalchemy.orm import Session

from ..errors import TrackError
from ..operations.lifecycle import WATCH_DEPLOYMENT
from ..operations.tracks import spec_of
from ..storage import Registry, deliveries
from ..storage import registry as rows
from ..storage.db import session_scope
from ..storage.models import Track
from ..terms import Dispatch
from .hub_events import HubEvent, delivery_key, release_refs

StartRun = Callable[[str, str], str | None]
"""Starts a track's run: called with the track name and an idempotency key; returns the run's id, if it has one."""

RELEASE_EVENTS = frozenset({("create", "repo"), ("update", "repo"), ("update", "repo.content")})
"""The (action, scope) pairs that can bring a new release: a new repo, or new commits, branches or tags."""

log = logging.getLogger("graftwork.webhook")
_SQLITE_TURN = threading.Lock()


@contextmanager
def receiver_session(registry: Registry) -> Iterator[Session]:
    """`session_scope` for the receiver's threads. On SQLite they first take turns on one lock in this process:
    SQLite lets one writer in at a time, and its busy wait is a lottery that kept one of 40 threads waiting
    over 5 s in a burst, where a queue keeps every turn short.

    Raises:
        DatabaseError: as `session_scope`.
    """
    turn: AbstractContextManager[object] = _SQLITE_TURN if registry.engine.dialect.name == "sqlite" else nullcontext()
    with turn, session_scope(registry.engine) as session:
        yield session


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
    """What a delivery did: `queued` the runs of `tracks` (the outbox starts them), nothing new (`duplicate`:
    an earlier delivery queued them), or nothing at all (`ignored`, with the reason)."""

    status: Literal["queued", "duplicate", "ignored"]
    key: str
    tracks: tuple[str, ...] = ()
    reason: str = ""


def record_delivery(registry: Registry, *, event: HubEvent) -> Outcome:
    """Record a delivery: one row per track that watches its repo, each the outbox entry that starts the
    track's run once. A delivery that no track watches (or a non-model repo, or an event that brings no
    release) is recorded without a track and ignored. One short transaction, which no Prefect call holds.

    Raises:
        DatabaseError: the registry database failed; nothing of the delivery is recorded.
    """
    key = delivery_key(event)
    reason = _not_a_release(event)
    with receiver_session(registry) as session:
        tracks = [] if reason else tracks_watching(session, repo_id=event.repo_id, refs=event.new_refs)
        if not tracks:
            deliveries.record(session, key=key, payload=event.payload, track=None)
            return Outcome(status="ignored", key=key, reason=reason or _unwatched(session, event))
        fresh = tuple(
            track.name
            for track in tracks
            if deliveries.record(session, key=f"{key}:{track.id}", payload=event.payload, track=track)
        )
    if fresh:
        return Outcome(status="queued", key=key, tracks=fresh)
    return Outcome(status="duplicate", key=key, tracks=tuple(track.name for track in tracks))


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


def start_watcher(track: str, idempotency_key: str) -> str:
    """Start a watcher pass over the track (the deployment `watch-releases/watch-releases`) and return its flow
    run's id at once.

    Prefect starts one run per idempotency key: calling this twice with one key returns the first run.

    Raises:
        prefect.exceptions.ObjectNotFound: the deployment does not exist; serve it (`graft serve`) or
            deploy `deployments/prefect.yaml`.
    """
    run = cast(
        FlowRun,
        run_deployment(
            WATCH_DEPLOYMENT,
            parameters={"track": track, "dispatch": Dispatch.DEPLOYMENT},
            idempotency_key=idempotency_key,
            timeout=0,
        ),
    )
    return str(run.id)
