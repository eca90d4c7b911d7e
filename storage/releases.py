"""A track's releases in their source's order, and each one's life (`terms.ReleaseState`): recorded
when discovered, dispatched, running (with a heartbeat), then done, failed (to be run again, with a
backoff, up to a limit), skipped (its model files are those of the release before it) or superseded (its
folder's files changed in place before it was done: the release that holds them now runs in its place).

Every function takes a Session and only adds and flushes; the caller's `session_scope()` commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import NotFoundError, ReleaseChangedError, ReleaseOrderError
from ..terms import ReleaseState
from .models import Release, ReleaseStatus, Track
from .registry import insert_or_get

FINISHED = frozenset({ReleaseState.DONE, ReleaseState.SKIPPED, ReleaseState.SUPERSEDED})
"""What a watcher pass is done with: it never runs them again, and the releases after them do not wait."""
PASSED_OVER = frozenset({ReleaseState.SKIPPED, ReleaseState.SUPERSEDED})
"""What no release carries from: the one after it carries from the release before it."""
LIVE = frozenset({ReleaseState.DISPATCHED, ReleaseState.RUNNING})
SUPERSEDABLE = frozenset({ReleaseState.DISCOVERED, ReleaseState.DISPATCHED, ReleaseState.FAILED})
"""What a watcher pass supersedes when it finds the release's folder holding other files: a release whose run is
not done and not running (a running one is superseded by its own run, when it finds its files changed)."""


@dataclass(frozen=True)
class Found:
    """A release as its source shows it: where it is, and its place in the source's order."""

    repo_id: str
    revision: str
    ref: str | None
    path: str | None
    position: str
    content_key: str


def known(session: Session, *, track: Track) -> set[tuple[str, str]]:
    """(repo id, revision) of every release of `track` recorded so far."""
    query = select(Release.repo_id, Release.revision).where(Release.track_id == track.id)
    return {(repo_id, revision) for repo_id, revision in session.execute(query)}


def record(session: Session, *, track: Track, found: Found) -> tuple[Release, bool]:
    """Record a release once, with its state: `skipped` when its model files are those of the release
    before it in the track's order, else `discovered`. Returns the release and whether it is new."""
    values = {
        "track_id": track.id,
        "repo_id": found.repo_id,
        "revision": found.revision,
        "ref": found.ref,
        "path": found.path,
        "position": found.position,
        "content_key": found.content_key,
    }
    release, new = insert_or_get(session, Release, unique=("track_id", "repo_id", "revision"), values=values)
    if new:
        before = previous(session, release=release)
        if before is not None and before.content_key == release.content_key:
            state, detail = ReleaseState.SKIPPED, f"its model files are those of {label(before)}"
        else:
            state, detail = ReleaseState.DISCOVERED, None
        session.add(ReleaseStatus(release_id=release.id, state=state, attempts=0, detail=detail))
        session.flush()
    return release, new


def recorded(session: Session, *, track: Track, repo_id: str, revision: str) -> Release | None:
    """The release of `track` recorded as `repo_id` at `revision`, if any."""
    query = select(Release).where(
        Release.track_id == track.id, Release.repo_id == repo_id, Release.revision == revision
    )
    return session.scalars(query).one_or_none()


def holds_its_folder(session: Session, *, release: Release) -> list[Release]:
    """Record that the files of `release`, a local one, are those its folder holds now (a watcher pass found
    them there): every other release of its track from that folder that is discovered, dispatched or failed is
    superseded by it, and `release` itself, if it was superseded, is discovered again (its files came back).
    Returns the releases it superseded; a Hub release (no folder) supersedes nothing."""
    if release.path is None:
        return []
    same_folder = select(Release).where(
        Release.track_id == release.track_id,
        Release.repo_id == release.repo_id,
        Release.ref == release.ref,
        Release.id != release.id,
    )
    others = list(session.scalars(same_folder.order_by(Release.id)))
    gone = [r for r in others if status(session, release=r).state in SUPERSEDABLE]
    for other in gone:
        supersede(session, release=other, by=release)
    own = status(session, release=release)
    if own.state is ReleaseState.SUPERSEDED:
        own.state, own.attempts, own.retry_at = ReleaseState.DISCOVERED, 0, None
        own.detail = f"its files are back in {release.path}"
    session.flush()
    return gone


def supersede(session: Session, *, release: Release, by: Release) -> bool:
    """Mark `release` superseded by `by`, the release that holds its folder's files now, unless its run is done
    (or it was skipped, or superseded already); returns whether it was."""
    row = status(session, release=release)
    if row.state in FINISHED:
        return False
    mark(session, release=release, state=ReleaseState.SUPERSEDED, detail=superseded_because(by)).retry_at = None
    session.flush()
    return True


def superseded_because(holder: Release) -> str:
    """Why a release is superseded by `holder`, in the words `graft track show` and `retry` give."""
    return f"its files changed since it was seen; {label(holder)} holds them now"


def check_current(session: Session, *, release: Release) -> None:
    """That `release` is not superseded: a run of it would read another release's files.

    Raises:
        ReleaseChangedError: it is superseded; the release that holds its folder's files runs in its place.
    """
    row = status(session, release=release)
    if row.state is ReleaseState.SUPERSEDED:
        raise ReleaseChangedError(
            f"{label(release)} is superseded: {row.detail} and runs in its place, so {label(release)} is never "
            f"run again (`graft track show {release.track.name}` shows both).",
            release=label(release),
            revision=release.revision,
        )


def in_order(session: Session, *, track: Track) -> list[Release]:
    """The track's releases in their source's order (releases recorded before positions existed first)."""
    releases = list(session.scalars(select(Release).where(Release.track_id == track.id)))
    return sorted(releases, key=lambda r: (r.position is not None, r.position or "", r.id))


def previous(session: Session, *, release: Release) -> Release | None:
    """The release before `release` in its track's order, skipped and superseded ones passed over: the one it
    carries from."""
    order = in_order(session, track=release.track)
    earlier = [r for r in order[: order.index(release)] if status(session, release=r).state not in PASSED_OVER]
    return earlier[-1] if earlier else None


def check_order(session: Session, *, release: Release) -> Release | None:
    """The release `release` carries from (None for the track's first), which must be done.

    Raises:
        ReleaseOrderError: that release is not done yet: this one's run must wait for it.
    """
    before = previous(session, release=release)
    if before is not None and (state := status(session, release=before).state) is not ReleaseState.DONE:
        raise ReleaseOrderError(
            f"{label(release)} carries from {label(before)}, which is {state}; it runs once {label(before)} is "
            f"done (the watcher starts it then; `graft track show {release.track.name}` shows both).",
            release=label(release),
        )
    return before


def status(session: Session, *, release: Release) -> ReleaseStatus:
    """The release's state row (one recorded without `record`, as the registry's own tests do, gets one:
    `discovered`)."""
    row = session.get(ReleaseStatus, release.id)
    if row is None:
        row = ReleaseStatus(release_id=release.id, state=ReleaseState.DISCOVERED, attempts=0)
        session.add(row)
        session.flush()
    return row


def label(release: Release) -> str:
    """How a release is named to people: `release-3 (02-M2)`."""
    return f"release-{release.id}" + (f" ({release.ref})" if release.ref else f" ({release.revision[:12]})")


def by_name(session: Session, *, track: Track, name: str) -> Release:
    """A release of `track` by its id (`release-3`, `3`), its ref or folder (`02-M2`; of a folder repaired in place,
    the release not superseded), or its sha (or a prefix).

    Raises:
        NotFoundError: no release of the track has that name, or a sha prefix names several.
    """
    number = name.removeprefix("release-")
    order = in_order(session, track=track)
    hits = [r for r in order if (number.isdigit() and r.id == int(number)) or r.ref == name]
    if not hits and len(name) >= 7:
        hits = [r for r in order if r.revision.startswith(name)]
    if len(hits) > 1:  # a folder repaired in place is two releases: the one in effect is not superseded
        hits = [r for r in hits if status(session, release=r).state is not ReleaseState.SUPERSEDED] or hits
    if len(hits) != 1:
        names = ", ".join(label(r) for r in order) or "none yet"
        why = "names several" if hits else "names none"
        raise NotFoundError(f"{name!r} {why} of track {track.name}'s releases (they are: {names}).", ref=name)
    return hits[0]


@dataclass(frozen=True)
class RetryPolicy:
    """How failed runs are run again: at most `limit` runs in all, waiting `backoff` after the first
    failure and twice as long after each next one; a run that stops reporting for `stale_after` died."""

    limit: int
    backoff: timedelta
    stale_after: timedelta


def describe(row: ReleaseStatus, *, policy: RetryPolicy) -> str:
    """A release's state in words, with why and what comes next: `failed (RuntimeError: CUDA out of
    memory), next run after 12:00:03 UTC`."""
    what = str(row.state) + (f" ({row.detail})" if row.detail else "")
    if row.state is ReleaseState.FAILED:
        if row.attempts >= policy.limit:
            what += f", {row.attempts} of {policy.limit} runs used: `graft track retry` runs it again"
        elif row.retry_at is not None:
            what += f", next run after {row.retry_at:%H:%M:%S} UTC"
    return what


def next_to_run(session: Session, *, track: Track, policy: RetryPolicy, now: datetime) -> Release | None:
    """The release a watcher pass may start now: the first in the track's order that is not finished, if
    it is new, or failed with runs left and its backoff over. None while that one runs or waits: the
    releases after it carry from it, so they wait too."""
    for release in in_order(session, track=track):
        row = status(session, release=release)
        if row.state in FINISHED:
            continue
        if row.state in LIVE:
            return None
        if row.state is ReleaseState.FAILED:
            spent = row.attempts >= policy.limit
            if spent or (row.retry_at is not None and row.retry_at > now):
                return None
        return release
    return None


def mark(
    session: Session,
    *,
    release: Release,
    state: ReleaseState,
    detail: str | None = None,
    runner: str | None = None,
    flow_run_id: str | None = None,
) -> ReleaseStatus:
    """Move a release to `state` (with what says why or who runs it); `running` counts a run and starts
    its heartbeat."""
    row = status(session, release=release)
    now = datetime.now(UTC)
    row.state, row.detail = state, detail
    if state is ReleaseState.RUNNING:
        row.attempts += 1
        row.runner, row.heartbeat_at, row.retry_at = runner, now, None
        row.flow_run_id = flow_run_id or row.flow_run_id
    elif state is ReleaseState.DISPATCHED:
        row.flow_run_id, row.runner = flow_run_id, None
    session.flush()
    return row


def fail(
    session: Session, *, release: Release, detail: str, policy: RetryPolicy, died: bool, counts: bool = False
) -> ReleaseStatus:
    """Record a failed run: a run that died (its process or machine went away) may run again at once; one
    that failed waits its backoff. Past the policy's limit it waits for `graft track retry`. `counts`: the
    failure happened before any run began (a failed dispatch), and counts as a run all the same."""
    row = mark(session, release=release, state=ReleaseState.FAILED, detail=detail)
    row.attempts += counts
    delay = timedelta(0) if died else policy.backoff * 2 ** max(row.attempts - 1, 0)
    row.retry_at = datetime.now(UTC) + delay
    session.flush()
    return row


def beat(session: Session, *, release: Release) -> None:
    """A sign of life of the release's run."""
    status(session, release=release).heartbeat_at = datetime.now(UTC)
    session.flush()


def retry(session: Session, *, release: Release) -> ReleaseStatus:
    """Let a release run again now, whatever ended its last run (`graft track retry`).

    Raises:
        ReleaseChangedError: the release is superseded: the release that holds its files runs in its place.
        NotFoundError: the release is done or skipped, or running: there is nothing to retry.
    """
    check_current(session, release=release)
    row = status(session, release=release)
    if row.state in FINISHED or row.state is ReleaseState.RUNNING:
        raise NotFoundError(
            f"{label(release)} is {row.state}: there is nothing to retry (a running one is retried by the "
            "watcher if it stops reporting).",
            ref=label(release),
        )
    row.state, row.attempts, row.retry_at, row.detail = ReleaseState.DISCOVERED, 0, None, "retried by hand"
    session.flush()
    return row
