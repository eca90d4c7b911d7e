"""Progress of long steps (downloads, transfers, fine-tuning) as Prefect progress artifacts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

UPDATE_EVERY_S = 2.0


@contextmanager
def progress_artifact(*, key: str, description: str) -> Iterator[Callable[[int, int], None]]:
    """A `report(done, total)` callback that keeps a progress artifact up to date (at most every
    couple of seconds, and at 100 % when the block completes)."""
    artifact = cast(UUID, create_progress_artifact(progress=0.0, key=artifact_key(key), description=description))
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if total and now - last >= UPDATE_EVERY_S:
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)
            last = now

    yield report
    update_progress_artifact(artifact_id=artifact, progress=100.0)


def artifact_key(key: str) -> str:
    """Artifact keys may hold only lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in key.lower())
