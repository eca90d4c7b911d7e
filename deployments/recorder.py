"""The webhook receiver's recorder: one thread that records the deliveries waiting for it in one transaction.

A burst of deliveries is recorded in a few transactions instead of one each. A transaction per delivery
made a burst wait on the database in turn, and in a busy process each turn waited for the interpreter
lock at every database call: on SQLite, 400 deliveries over 64 connections took 19 s and some waited
more than 5 s for their turn. Each delivery's answer waits for the transaction that holds it.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from ..storage import Registry
from .deliveries import Outcome, record_deliveries
from .hub_events import HubEvent

MAX_BATCH = 100
_Waiting = tuple[HubEvent, "Future[Outcome]"]


class Recorder:
    """Records deliveries from a thread of its own, in batches of at most `max_batch`: each `submit` joins
    the next transaction. A delivery whose future is cancelled before its transaction began is not recorded."""

    def __init__(self, registry: Registry, *, max_batch: int = MAX_BATCH) -> None:
        self._registry, self._max_batch = registry, max_batch
        self._waiting: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start recording."""
        self._thread = threading.Thread(target=self._loop, name="webhook-recorder", daemon=True)
        self._thread.start()

    def submit(self, event: HubEvent) -> Future[Outcome]:
        """Queue `event` for the next transaction; its future holds the `Outcome`, or the error that kept the
        whole transaction from being recorded (`DatabaseError`: nothing of it is recorded).

        Raises:
            RuntimeError: the recorder is not running (`start` was not called, or `stop` was).
        """
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the webhook recorder is not running; start it (the app's lifespan does).")
        future: Future[Outcome] = Future()
        self._waiting.put((event, future))
        return future

    def stop(self, *, timeout: float = 10.0) -> None:
        """Record what is queued, then stop, waiting at most `timeout` seconds."""
        self._waiting.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            taken = [self._waiting.get()]
            while len(taken) < self._max_batch and taken[-1] is not None:
                try:
                    taken.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            stopping = taken[-1] is None
            batch = [item for item in taken if item is not None and item[1].set_running_or_notify_cancel()]
            if batch:
                self._record_batch(batch)

    def _record_batch(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = record_deliveries(self._registry, events=[event for event, _ in batch])
        except Exception as e:  # each delivery's answer says it: a DatabaseError is a 503, a defect a 500
            for _, future in batch:
                future.set_exception(e)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            future.set_result(outcome)
