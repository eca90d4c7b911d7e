"""Hub webhook deliveries: find the tracks that watch a delivery's repo, and record one outbox row per track.

A delivery is identified by `delivery_key`, a hash of what it says (repo, event, head commit and
updated refs), so the Hub replaying it, or sending it twice, gives the same key. Each (delivery,
track) pair is recorded as one `webhook_deliveries` row, in a short transaction (shared with the other
deliveries waiting: `recorder.Recorder`) that the answer waits for; the track's run is started afterwards,
from the row, by the receiver's outbox (`outbox.Drainer`), with the row's key as Prefect's idempotency key: a
delivery recorded is a run started, exactly once, however often it is sent and whenever the receiver is restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, cast

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
from ..tasks.track import TrackSpec
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
    return _watching(_specs(session), repo_id=repo_id, refs=refs)


def _specs(session: Session) -> list[tuple[Track, TrackSpec]]:
    """The registered tracks with their validated specs, in name order; a track whose stored spec no longer
    validates is left out, and logged."""
    specs = []
    for track in rows.list_tracks(session):
        try:
            specs.append((track, spec_of(track)))
        except TrackError as e:
            log.warning("%s", e)
    return specs


def _watching(specs: list[tuple[Track, TrackSpec]], *, repo_id: str, refs: Collection[str] | None) -> list[Track]:
    return [track for track, spec in specs if spec.source.watches(repo_id=repo_id, refs=refs)]


@dataclass(frozen=True)
class Outcome:
    """What a delivery did: `queued` the runs of `tracks` (the outbox starts them), nothing new (`duplicate`:
    an earlier delivery queued them), or nothing at all (`ignored`, with the reason)."""

    status: Literal["queued", "duplicate", "ignored"]
    key: str
    tracks: tuple[str, ...] = ()
    reason: str = ""


def record_deliveries(registry: Registry, *, events: Sequence[HubEvent]) -> list[Outcome]:
    """Record deliveries, in one short transaction that no Prefect call holds, and say what each did.

    A delivery is recorded as one row per track that watches its repo, each the outbox entry that starts the
    track's run once; one that no track watches (or a non-model repo, or an event that brings no release) is
    recorded without a track, and ignored. A delivery recorded before, or earlier in `events`, is a duplicate.

    Raises:
        DatabaseError: the registry database failed; none of `events` is recorded.
    """
    plans: list[tuple[str, list[Track], str]] = []
    new_rows: list[tuple[str, dict[str, Any], Track | None]] = []
    judged = [(event, delivery_key(event), _not_a_release(event)) for event in events]
    with receiver_session(registry) as session:
        specs = _specs(session)
        for event, key, reason in judged:
            tracks = [] if reason else _watching(specs, repo_id=event.repo_id, refs=event.new_refs)
            if tracks:
                new_rows += [(f"{key}:{track.id}", event.payload, track) for track in tracks]
            else:
                reason = reason or _unwatched(specs, event)
                new_rows.append((key, event.payload, None))
            plans.append((key, tracks, reason))
        fresh_keys = deliveries.record(session, rows=new_rows)
    outcomes = []
    for key, tracks, reason in plans:
        if not tracks:
            outcomes.append(Outcome(status="ignored", key=key, reason=reason))
            continue
        keys = {track.name: f"{key}:{track.id}" for track in tracks}
        fresh = tuple(name for name, row_key in keys.items() if row_key in fresh_keys)
        fresh_keys -= set(keys.values())  # the same delivery again, later in `events`, is a duplicate
        status: Literal["queued", "duplicate"] = "queued" if fresh else "duplicate"
        outcomes.append(Outcome(status=status, key=key, tracks=fresh or tuple(keys)))
    return outcomes


def _unwatched(specs: list[tuple[Track, TrackSpec]], event: HubEvent) -> str:
    """Why no track starts for a release event: no track watches the repo, or those that do watch other refs."""
    watchers = _watching(specs, repo_id=event.repo_id, refs=None)
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
