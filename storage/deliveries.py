"""Data access for Hub webhook deliveries: the receiver's outbox.

A delivery is recorded once per (delivery, track) key, in the transaction that answers it; its track's run
is started later, from the row, by whoever drains the outbox (`due`, `claim`, then `mark_started` or
`mark_failed`).
A row with no track is a delivery that started nothing (ignored). Every function only adds and flushes: the
caller's `session_scope()` commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .models import Track, WebhookDelivery
from .registry import insert_missing


@dataclass(frozen=True)
class Pending:
    """A delivery whose track's run is still to be started: its key (the run's idempotency key) and track."""

    key: str
    track: str
    attempts: int


@dataclass(frozen=True)
class Backlog:
    """The outbox at a glance: deliveries waiting for their run, how many of them failed at least once, and
    the newest failure's reason."""

    waiting: int
    failing: int
    last_error: str | None


def record(session: Session, *, rows: Sequence[tuple[str, dict[str, Any], Track | None]]) -> set[str]:
    """Record each (key, payload, track) of `rows` whose key is new, in one statement; return the keys recorded.
    A key recorded before, or earlier in `rows`, is not recorded again.

    Two processes recording the same key at once get one row: on PostgreSQL the second waits for the
    first's transaction and sees the row once it commits (keys go in in sorted order, so two batches never
    wait for each other both ways); on SQLite writers queue on the database lock.
    """
    values = [
        {"key": key, "payload": payload, "track_id": None if track is None else track.id}
        for key, payload, track in rows
    ]
    return insert_missing(session, WebhookDelivery, unique="key", rows=values)


def due(session: Session, *, now: datetime, limit: int) -> list[Pending]:
    """Up to `limit` deliveries whose run is not started and may be tried now, oldest first."""
    query = (
        select(WebhookDelivery.key, Track.name, WebhookDelivery.attempts)
        .join(Track, Track.id == WebhookDelivery.track_id)
        .where(WebhookDelivery.started_at.is_(None))
        .where(WebhookDelivery.retry_at.is_(None) | (WebhookDelivery.retry_at <= now))
        .order_by(WebhookDelivery.id)
        .limit(limit)
    )
    return [Pending(key=key, track=track, attempts=attempts) for key, track, attempts in session.execute(query)]


def claim(session: Session, *, key: str, now: datetime, until: datetime) -> bool:
    """Take the delivery `key` for one try to start its run, until `until`; False when it is started already
    or another drainer holds it (its claim ends at `until`, so that a drainer that died lets it go)."""
    taken = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.key == key, WebhookDelivery.started_at.is_(None))
        .where(WebhookDelivery.retry_at.is_(None) | (WebhookDelivery.retry_at <= now))
        .values(retry_at=until)
    )
    return bool(getattr(taken, "rowcount", 0))


def mark_started(session: Session, *, key: str, flow_run_id: str | None, at: datetime) -> None:
    """Record that the run of delivery `key` was started (as `flow_run_id`)."""
    row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.key == key)).one()
    row.started_at, row.flow_run_id, row.retry_at = at, flow_run_id, None
    session.flush()


def mark_failed(session: Session, *, key: str, error: str, retry_at: datetime) -> int:
    """Record a failed try to start the run of delivery `key`, to be tried again at `retry_at`; return the
    tries so far."""
    row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.key == key)).one()
    row.attempts += 1
    row.last_error, row.retry_at = error, retry_at
    session.flush()
    return row.attempts


def backlog(session: Session) -> Backlog:
    """How many deliveries wait for their run, and how many of those have failed."""
    waiting = WebhookDelivery.track_id.is_not(None) & WebhookDelivery.started_at.is_(None)
    counts = session.execute(
        select(func.count(), func.count().filter(WebhookDelivery.attempts > 0)).where(waiting)
    ).one()
    last = session.scalar(
        select(WebhookDelivery.last_error)
        .where(waiting, WebhookDelivery.attempts > 0)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    )
    return Backlog(waiting=counts[0], failing=counts[1], last_error=last)
