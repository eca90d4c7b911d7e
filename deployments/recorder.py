"""The webhook receiver's recorder: one thread that records the deliveries waiting for it in one transaction.

A burst of deliveries is recorded in a few transactions instead of one each. With one each, a receiver whose
process was busy made every transaction wait for the interpreter at each database call, and a burst's
deliveries queued for the database past the 5 s an answer may take (`benchmarks/bench_webhook.py`). Each
delivery's answer waits for the transaction that holds it.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from ..errors import RecorderStoppedError
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
        self._lock = threading.Lock()
        self._running = False

    def start(self) -> None:
        """Start recording."""
        with self._lock:
            self._thread = threading.Thread(target=self._loop, name="webhook-recorder", daemon=True)
            self._thread.start()
            self._running = True

    def submit(self, event: HubEvent) -> Future[Outcome]:
        """Queue `event` for the next transaction; its future holds the `Outcome`, or the error that kept its
        transaction from being recorded (`DatabaseError`: none of that transaction's deliveries is recorded).

        Raises:
            RecorderStoppedError: the recorder is not running (`start` was not called, or `stop` was).
        """
        future: Future[Outcome] = Future()
        with self._lock:
            if not self._running:
                raise RecorderStoppedError("the webhook recorder is not running; start it (the app's lifespan does).")
            self._waiting.put((event, future))
        return future

    def stop(self, *, timeout: float = 10.0) -> None:
        """Record what is queued, then stop, waiting at most `timeout` seconds; a delivery still queued after
        that fails with `RecorderStoppedError`."""
        with self._lock:
            self._running = False
            self._waiting.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        stopped = RecorderStoppedError("the webhook receiver stopped before it recorded the delivery")
        while True:
            try:
                item = self._waiting.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_exception(stopped)
        if self._thread is not None and self._thread.is_alive():  # still in a transaction: it stops after it
            self._waiting.put(None)

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
            answered = list(zip(batch, outcomes, strict=True))
        except BaseException as e:  # each delivery's answer says it: a DatabaseError is a 503, a defect a 500
            for _, future in batch:
                future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for (_, future), outcome in answered:
            future.set_result(outcome)
