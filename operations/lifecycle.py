"""A release's run, as its state in the registry sees it: `running` (who runs it, and a heartbeat while it
runs), then `done`, or `failed` with what went wrong, so that a later watcher pass can run it again, or
`superseded` when its local folder's files changed under it and another release holds them now; and the check
that the files a run reads are those its release was recorded with (`check_files`).

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

from ..errors import ModelFolderError, ReleaseChangedError
from ..storage import registry as rows
from ..storage import releases
from ..storage.db import session_scope
from ..tasks.hub import ReleaseRef, content_revision
from ..terms import Dispatch, ReleaseState
from .settings import Workspace

RECYCLE_DEPLOYMENT = "recycle-then-finetune/recycle-then-finetune"
WATCH_DEPLOYMENT = "watch-releases/watch-releases"


@contextmanager
def release_run(where: Workspace, *, release_id: int) -> Iterator[None]:
    """Run the block as the release's run: marked `running` (by this process, in this flow run) with a
    heartbeat every `where.heartbeat_seconds`, then `done`; an error marks it `failed` (run again after
    the backoff) and an interruption marks it as having died (run again at once). A release the run found
    superseded (`check_files`) stays so.

    Raises:
        ReleaseChangedError: the release is superseded: nothing is marked, the release that holds its files runs.
        ReleaseOrderError: the release it carries from is not done: nothing is marked, the release waits.
    """
    runner = f"{socket.gethostname()}:{os.getpid()}"
    run_id = flow_run.get_id()
    with session_scope(where.registry().engine) as session:
        release = rows.get_release(session, release_id=release_id)
        releases.check_current(session, release=release)
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
        if releases.status(session, release=release).state is ReleaseState.SUPERSEDED:
            return
        if failure is None:
            releases.mark(session, release=release, state=ReleaseState.DONE)
        else:
            releases.fail(session, release=release, detail=failure, policy=where.retry_policy(), died=died)


def check_files(where: Workspace, *, release_id: int, release: ReleaseRef) -> None:
    """That the files of a local release's folder are still those it was recorded with (its revision is their
    hash), so that what a run reads, and the candidate and Δ it records under the release, are the release's
    bytes. A Hub release is pinned to its commit: there is nothing to check.

    Raises:
        ModelFolderError: the folder is gone.
        ReleaseChangedError: the folder's files changed since the release was seen (repaired or replaced in
            place). When a watcher pass recorded them already, as another release, this one is superseded by it
            (unless its run was done before).
    """
    if release.path is None:
        return
    if not release.path.is_dir():
        raise ModelFolderError(
            f"release {release}: its folder {release.path} is gone; put it back, and a later watcher pass runs it "
            "again.",
            path=release.path,
        )
    if (now := content_revision(release.path)) == release.revision:
        return
    with session_scope(where.registry().engine) as session:
        row = rows.get_release(session, release_id=release_id)
        holder = releases.recorded(session, track=row.track, repo_id=row.repo_id, revision=now)
        if holder is not None:
            releases.supersede(session, release=row, by=holder)
            fix = f"{releases.label(holder)} holds them now"
        else:
            fix = (
                f"the next watcher pass (`graft track watch {row.track.name}`) records them as a new release, "
                "or put back the files it was seen with"
            )
        label = releases.label(row)
    raise ReleaseChangedError(
        f"{label}: its files in {release.path} changed since it was seen (sha {release.revision[:12]} then, "
        f"{now[:12]} now); {fix}. Nothing is recorded under {label} from them.",
        release=label,
        revision=now,
    )


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
