"""The webhook receiver's outbox: start the runs of the deliveries it recorded, after it answered them.

A recorded (delivery, track) row is started by `drain`: `start_run(track, key)` with the row's key as
Prefect's idempotency key, then the row is marked started. A try that fails is recorded on the row
(its reason, and when to try again, backing off up to `MAX_BACKOFF_S`) and tried again. A receiver killed
between starting a run and marking its row finds the row waiting when it starts again and starts it again
under the same key, which Prefect answers with the run it started: each delivery is one run, exactly once.
Two receivers on one registry share the rows: each claims a row before it tries it (`CLAIM`), and where a
claim runs out under a slow start, the key makes the second try the same run.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..errors import DatabaseError
from ..operations.lifecycle import WATCH_DEPLOYMENT, why_not_started
from ..storage import Registry, deliveries
from .deliveries import StartRun, receiver_session

MAX_BACKOFF_S = 300.0
CLAIM = timedelta(seconds=15)
"""How long a drainer holds a delivery while it starts its run. Another may try it after that: the same run, under
its key, if the first is only slow; the delivery's run, if the first was killed (a restart waits this long)."""
log = logging.getLogger("graftwork.webhook")
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def backoff(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failed try: 1 s, doubling, at most `MAX_BACKOFF_S`."""
    return timedelta(seconds=min(2.0 ** (attempts - 1), MAX_BACKOFF_S))


@dataclass(frozen=True)
class Drained:
    """What one `drain` did: runs started, and tries that failed (to be tried again)."""

    started: int = 0
    failed: int = 0


def drain(registry: Registry, *, start_run: StartRun, now: Clock = _utcnow, batch: int = 50) -> Drained:
    """Start the run of every recorded delivery that is due, oldest first, and mark each started; record a
    failed try on its row, to be tried again after `backoff`.

    Raises:
        DatabaseError: the registry database failed; the rows not yet marked stay as they were (a row
            whose run was started is started again under its key: the same run).
    """
    started = failed = 0
    while True:
        with receiver_session(registry) as session:
            due = deliveries.due(session, now=now(), limit=batch)
        if not due:
            return Drained(started=started, failed=failed)
        for pending in due:
            with receiver_session(registry) as session:
                if not deliveries.claim(session, key=pending.key, now=now(), until=now() + CLAIM):
                    continue  # another receiver tries it
            try:
                run_id = start_run(pending.track, pending.key)
            except Exception as e:  # whatever Prefect raised: recorded on the row, and tried again
                reason = why_not_started(e, deployment=WATCH_DEPLOYMENT)
                wait = backoff(pending.attempts + 1)
                with receiver_session(registry) as session:
                    tries = deliveries.mark_failed(session, key=pending.key, error=reason, retry_at=now() + wait)
                log.warning(
                    "delivery %s: could not start the run of track %s (try %d): %s; trying again in %.0f s",
                    pending.key[:12], pending.track, tries, reason, wait.total_seconds(),
                )  # fmt: skip
                failed += 1
                continue
            with receiver_session(registry) as session:
                deliveries.mark_started(session, key=pending.key, flow_run_id=run_id, at=now())
            log.info("delivery %s: started run %s of track %s", pending.key[:12], run_id, pending.track)
            started += 1


class Drainer:
    """Drains the outbox in a thread of its own: at once when `wake` is called (a delivery was recorded), and
    every `poll_s` seconds (for the tries that wait, and the rows an earlier receiver left)."""

    def __init__(self, registry: Registry, *, start_run: StartRun, poll_s: float = 2.0) -> None:
        self._registry, self._start_run, self._poll_s = registry, start_run, poll_s
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start draining, with the caller's context (the Prefect settings that point at its server)."""
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="webhook-outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Drain now: a delivery was recorded."""
        self._wake.set()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop draining, waiting at most `timeout` seconds for the drain in progress (a row it leaves unmarked is
        started by the next receiver, under its key: the same run)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                drain(self._registry, start_run=self._start_run)
            except DatabaseError as e:
                log.error("outbox: %s; trying again in %.0f s", e, self._poll_s)
            except Exception:  # a defect: said with its traceback, and the outbox drains on
                log.exception("outbox: draining failed; trying again in %.0f s", self._poll_s)
            self._wake.wait(self._poll_s)
