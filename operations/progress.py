"""Progress of long steps (downloads, transfers, fine-tuning, evaluation): Prefect progress artifacts
for the UI, and the listeners a command registers in this process to draw live bars in the terminal.

A listener is told `(what, done, total)` as a step advances; `what` names the step (`03-M3: fine-tune`)
and `done == total` ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

UPDATE_EVERY_S = 2.0
Report = Callable[[int, int], None]
Listener = Callable[[str, int, int], None]
_listeners: list[Listener] = []


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Tell `listener` of every step's progress in this process while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


@contextmanager
def told(what: str) -> Iterator[Report]:
    """A `report(done, total)` callback for a step outside a flow run: the listeners only."""
    total = 0

    def report(done: int, of: int) -> None:
        nonlocal total
        total = of
        for listener in list(_listeners):
            listener(what, done, of)

    yield report
    for listener in list(_listeners):
        listener(what, max(total, 1), max(total, 1))


@contextmanager
def progress_artifact(*, description: str) -> Iterator[Report]:
    """A `report(done, total)` callback that keeps a progress artifact of the current run up to date (at most
    every couple of seconds, and at 100 % when the block completes) and tells the listeners of every call.

    The artifact has no key: it is shown with its run (its Artifacts tab, named by `description`), not on the
    Prefect UI's Artifacts page, which lists keyed artifacts and is kept for results (tables, decisions)."""
    artifact = cast(UUID, create_progress_artifact(progress=0.0, description=description))
    last = 0.0

    with told(description) as tell:

        def report(done: int, total: int) -> None:
            nonlocal last
            tell(done, total)
            now = time.monotonic()
            if total and now - last >= UPDATE_EVERY_S:
                update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)
                last = now

        yield report
    update_progress_artifact(artifact_id=artifact, progress=100.0)
