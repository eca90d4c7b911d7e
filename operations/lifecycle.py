"""A release's run, as its state in the registry sees it: `running` (who runs it, and a heartbeat while it
runs), then `done`, or `failed` with what went wrong, so that a later watcher pass can run it again.

A process killed outright cannot say so: its release stays `running` until a watcher pass finds its
process gone, its Prefect flow run ended, or its heartbeat stale (`flows.watch.reconcile`).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from ..storage import registry as rows
from ..storage import releases
from ..storage.db import session_scope
from ..terms import Dispatch, ReleaseState
from .settings import Workspace

RECYCLE_DEPLOYMENT = "recycle-then-finetune/recycle-then-finetune"
WATCH_DEPLOYMENT = "watch-releases/watch-releases"


@contextmanager
def release_run(where: Workspace, *, release_id: int) -> Iterator[None]:
    """Run the block as the release's run: marked `running` (by this process, in this flow run) with a
    heartbeat every `where.heartbeat_seconds`, then `done`; an error marks it `failed` (run again after
    the backoff) and an interruption marks it as having died (run again at once).

    Raises:
        ReleaseOrderError: the release it carries from is not done: nothing is marked, the release waits.
    """
    runner = f"{socket.gethostname()}:{os.getpid()}"
    run_id = flow_run.get_id()
    with session_scope(where.registry().engine) as session:
        release = rows.get_release(session, release_id=release_id)
        releases.check_order(session, release=release)
        releases.mark(session, release=release, state=ReleaseState.RUNNING, runner=runner, flow_run_id=run_id)
    stop = threading.Event()
    beating = threading.Thread(target=_beat, args=(where, release_id, stop), name="graft-heartbeat", daemon=True)
    beating.start()
    try:
        yield
    except BaseException as e:
        _end(where, release_id, failure=f"{type(e).__name__}: {e}", died=not isinstance(e, Exception))
        raise
    else:
        _end(where, release_id, failure=None, died=False)
    finally:
        stop.set()
        beating.join()


def _beat(where: Workspace, release_id: int, stop: threading.Event) -> None:
    while not stop.wait(where.heartbeat_seconds):
        with session_scope(where.registry().engine) as session:
            releases.beat(session, release=rows.get_release(session, release_id=release_id))


def _end(where: Workspace, release_id: int, *, failure: str | None, died: bool) -> None:
    with session_scope(where.registry().engine) as session:
        release = rows.get_release(session, release_id=release_id)
        if failure is None:
            releases.mark(session, release=release, state=ReleaseState.DONE)
        else:
            releases.fail(session, release=release, detail=failure, policy=where.retry_policy(), died=died)


def start_next_pass(*, track: str, after: str) -> None:
    """Start the track's watcher deployment, so that the release after this one starts now rather than at
    the next scheduled pass; if it cannot be started, the scheduled pass will do it (logged, not raised)."""
    try:
        run_deployment(
            WATCH_DEPLOYMENT,
            parameters={"track": track, "dispatch": Dispatch.DEPLOYMENT},
            idempotency_key=f"{track}:after:{after}",
            timeout=0,
        )
    except Exception as e:
        get_run_logger().warning(
            "track %s: could not start the next watcher pass (%s); the scheduled one will", track, e
        )


def why_not_started(error: Exception, *, deployment: str) -> str:
    """What a failed `run_deployment` says to a person (Prefect's ObjectNotFound says only "None")."""
    if isinstance(error, ObjectNotFound):
        return (
            f"the deployment {deployment} does not exist: serve it (`graft serve`) or deploy "
            "deployments/prefect.yaml (`prefect deploy --all`)"
        )
    return f"{type(error).__name__}: {error}"
