"""Data access for the registry. Every function takes a Session and only adds and flushes: the
caller's `session_scope()` commits. Artifact rows are only ever inserted; registering something
that is already there returns the existing row, also when two processes race to insert it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, get_args

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.errors import DatabaseError, NotFoundError
from storage.models import Base, Candidate, Diff, DiffFile, EvalResult, Promotion, Release, Track, WebhookDelivery

Kind = Literal["release", "diff", "candidate", "promotion"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Artifact = Release | Diff | Candidate | Promotion
_MODELS: dict[Kind, type[Artifact]] = {"release": Release, "diff": Diff, "candidate": Candidate, "promotion": Promotion}
M = TypeVar("M", bound=Base)


def public_id(row: Artifact) -> str:
    """The id a user types: `KIND-N`, e.g. `diff-12`."""
    kind = next(k for k, model in _MODELS.items() if isinstance(row, model))
    return f"{kind}-{row.id}"


def _insert_or_get(
    session: Session, model: type[M], *, unique: tuple[str, ...], values: dict[str, Any]
) -> tuple[M, bool]:
    """Insert a row unless one with the same `unique` values exists; return the row and whether it is new."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(model)
    elif dialect == "sqlite":
        stmt = sqlite.insert(model)
    else:
        raise DatabaseError(f"the registry supports SQLite and PostgreSQL, not {dialect}.")
    table = model.__table__
    stmt = stmt.values(**values).on_conflict_do_nothing(index_elements=list(unique))
    new_id = session.execute(stmt.returning(table.c.id)).scalar_one_or_none()
    where = [getattr(model, column) == values[column] for column in unique]
    return session.scalars(select(model).where(*where)).one(), new_id is not None


def ensure_track(session: Session, *, name: str, spec: dict[str, Any] | None = None) -> Track:
    """The track called `name`, created (with `spec`) when it does not exist."""
    track, _ = _insert_or_get(session, Track, unique=("name",), values={"name": name, "spec": spec or {}})
    return track


def save_track(session: Session, *, name: str, spec: dict[str, Any]) -> tuple[Track, bool]:
    """Create the track `name`, or replace its spec (a track is configuration, not an artifact).

    Returns the track and whether it is new.
    """
    track, new = _insert_or_get(session, Track, unique=("name",), values={"name": name, "spec": spec})
    if not new and track.spec != spec:
        track.spec = spec
        session.flush()
    return track, new


def list_tracks(session: Session) -> list[Track]:
    """Every track, by name."""
    return list(session.scalars(select(Track).order_by(Track.name)))


def get_track(session: Session, *, name: str) -> Track:
    """The track called `name`.

    Raises:
        NotFoundError: no such track.
    """
    track = session.scalars(select(Track).where(Track.name == name)).one_or_none()
    if track is None:
        known = ", ".join(session.scalars(select(Track.name).order_by(Track.name))) or "none yet"
        raise NotFoundError(f"no track named {name!r} in the registry (tracks: {known}).")
    return track


def record_release(
    session: Session, *, track: Track, repo_id: str, revision: str, ref: str | None = None, path: str | None = None
) -> tuple[Release, bool]:
    """Record a release of `track` once; return it and whether it is new."""
    values = {"track_id": track.id, "repo_id": repo_id, "revision": revision, "ref": ref, "path": path}
    return _insert_or_get(session, Release, unique=("track_id", "repo_id", "revision"), values=values)


def record_delivery(
    session: Session, *, key: str, payload: dict[str, Any], track: Track | None
) -> tuple[WebhookDelivery, bool]:
    """Record a webhook delivery once per `key`; return the row and whether it is new.

    Two processes recording the same key at once get one row: on PostgreSQL the second waits for the
    first's transaction and sees the row once it commits; on SQLite writers queue on the database lock.
    """
    values = {"key": key, "payload": payload, "track_id": None if track is None else track.id}
    return _insert_or_get(session, WebhookDelivery, unique=("key",), values=values)


@dataclass(frozen=True)
class StoredFile:
    """One file of a diff folder as stored: its path in the folder, raw and stored hashes and sizes."""

    path: str
    raw_sha256: str
    raw_bytes: int
    blob_sha256: str
    stored_bytes: int
    codec: str


@dataclass(frozen=True)
class NewDiff:
    """What registering a diff records. `key` identifies its content (the same files give the same key)."""

    key: str
    finetuned: dict[str, Any]
    base: dict[str, Any]
    tensor_count: int
    norms: dict[str, float]
    codec: str
    graftwork_version: str
    files: tuple[StoredFile, ...]
    parent_id: int | None = None
    base_release_id: int | None = None
    candidate_id: int | None = None


def add_diff(session: Session, *, track: Track, diff: NewDiff) -> tuple[Diff, bool]:
    """Record a diff and its files once per track and content key; return it and whether it is new."""
    values = {
        "track_id": track.id,
        "key": diff.key,
        "parent_id": diff.parent_id,
        "base_release_id": diff.base_release_id,
        "candidate_id": diff.candidate_id,
        "finetuned": diff.finetuned,
        "base": diff.base,
        "tensor_count": diff.tensor_count,
        "norms": diff.norms,
        "codec": diff.codec,
        "raw_bytes": sum(f.raw_bytes for f in diff.files),
        "stored_bytes": sum(f.stored_bytes for f in diff.files),
        "graftwork_version": diff.graftwork_version,
    }
    row, new = _insert_or_get(session, Diff, unique=("track_id", "key"), values=values)
    if new:
        session.add_all(DiffFile(diff_id=row.id, **vars(f)) for f in diff.files)
        session.flush()
    return row, new


def get(session: Session, *, ref: str) -> Artifact:
    """The artifact a public id (`diff-12`, `release-3`, ...) names.

    Raises:
        NotFoundError: no such id, or `ref` is not of the form KIND-N.
    """
    kind, _, number = ref.rpartition("-")
    if kind not in _MODELS or not number.isdigit():
        raise NotFoundError(f"{ref!r} is not a registry id; ids look like {', '.join(k + '-1' for k in KINDS)}.")
    return _by_id(session, cast(Kind, kind), int(number))


def _by_id(session: Session, kind: Kind, number: int) -> Artifact:
    row = cast(Artifact | None, session.get(_MODELS[kind], number))
    if row is None:
        raise NotFoundError(f"no {kind} with id {number} in the registry; `graft registry list` shows what there is.")
    return row


def get_diff(session: Session, *, ref: str) -> Diff:
    """The diff a public id names; a bare number is taken as a diff id.

    Raises:
        NotFoundError: no such diff.
    """
    row = get(session, ref=ref if "-" in ref else f"diff-{ref}")
    if not isinstance(row, Diff):
        raise NotFoundError(f"{ref} is a {public_id(row).split('-')[0]}, not a diff.")
    return row


def list_artifacts(session: Session, *, track: Track | None = None, kind: Kind | None = None) -> list[Artifact]:
    """Artifacts, oldest first, of one kind or all, on one track or all."""
    rows: list[Artifact] = []
    for k in [kind] if kind else KINDS:
        model = _MODELS[k]
        query = select(model)
        if track is not None:
            query = query.where(model.track_id == track.id)
        rows.extend(session.scalars(query))
    return sorted(rows, key=lambda r: (r.created_at, KINDS.index(public_id(r).split("-")[0]), r.id))


def ancestors(session: Session, *, diff: Diff) -> list[Diff]:
    """`diff`'s parent chain, nearest first (Δ_{i−1}, Δ_{i−2}, ...)."""
    chain: list[Diff] = []
    current = diff
    while current.parent_id is not None:
        parent = session.get(Diff, current.parent_id)
        assert parent is not None, "a foreign key guarantees the parent exists"
        chain.append(parent)
        current = parent
    return chain


def carried_diff(session: Session, *, track: Track, mode: str, before: Release) -> Diff | None:
    """The Δ a release of `track` starts from, taken from releases recorded before it.

    `iterative`: the newest diff made from one of the track's candidates (Δ_{i−1} = M*_{i−1} − M_{i−1});
    `direct`: the newest source diff (one with no parent: the first fine-tune, or one imported);
    `none`: nothing.
    """
    if mode == "none":
        return None
    query = select(Diff).where(Diff.track_id == track.id)
    if mode == "iterative":
        query = query.where(Diff.candidate_id.is_not(None), Diff.base_release_id < before.id)
    else:
        query = query.where(
            Diff.parent_id.is_(None), (Diff.base_release_id < before.id) | Diff.base_release_id.is_(None)
        )
    return session.scalars(query.order_by(Diff.id.desc()).limit(1)).one_or_none()


def get_release(session: Session, *, release_id: int) -> Release:
    """A release by id.

    Raises:
        NotFoundError: no such release.
    """
    row = _by_id(session, "release", release_id)
    assert isinstance(row, Release)
    return row


def get_candidate(session: Session, *, candidate_id: int) -> Candidate:
    """A candidate by id.

    Raises:
        NotFoundError: no such candidate.
    """
    row = _by_id(session, "candidate", candidate_id)
    assert isinstance(row, Candidate)
    return row


def candidate_at(session: Session, *, release: Release, model_uri: str) -> Candidate | None:
    """The candidate already recorded for `release` with its model at `model_uri`, if any."""
    query = select(Candidate).where(Candidate.release_id == release.id, Candidate.model_uri == model_uri)
    return session.scalars(query.order_by(Candidate.id).limit(1)).one_or_none()


def candidate_for(session: Session, *, track: Track, ref: str) -> Candidate | None:
    """The newest candidate made for the track's release published as `ref` (a branch, tag or folder)."""
    query = (
        select(Candidate)
        .join(Release, Candidate.release_id == Release.id)
        .where(Candidate.track_id == track.id, Release.ref == ref)
        .order_by(Candidate.id.desc())
        .limit(1)
    )
    return session.scalars(query).one_or_none()


def release_scores(session: Session, *, candidate: Candidate, metric: str) -> list[EvalResult]:
    """One metric's results for every model scored in the candidate's run (candidate, base, transferred)."""
    query = select(EvalResult).where(EvalResult.release_id == candidate.release_id, EvalResult.metric == metric)
    return list(session.scalars(query.order_by(EvalResult.id)))


def decision_for(session: Session, *, candidate: Candidate) -> Promotion | None:
    """The gate's decision on `candidate`, if it was made."""
    query = select(Promotion).where(Promotion.to_candidate_id == candidate.id, Promotion.actor == "gate")
    return session.scalars(query.order_by(Promotion.id).limit(1)).one_or_none()


def diffs_of(session: Session, *, track: Track) -> list[Diff]:
    """A track's diffs, in the order they were registered."""
    return list(session.scalars(select(Diff).where(Diff.track_id == track.id).order_by(Diff.id)))


def eval_results(session: Session, *, candidate: Candidate) -> list[EvalResult]:
    """The eval results recorded for a candidate."""
    return list(session.scalars(select(EvalResult).where(EvalResult.candidate_id == candidate.id)))


def add_candidate(
    session: Session,
    *,
    track: Track,
    release: Release,
    mode: str,
    alpha: float,
    model_uri: str,
    source_diff: Diff | None = None,
    finetune_run_id: int | None = None,
) -> Candidate:
    """Record a candidate model made for `release` of `track`."""
    row = Candidate(
        track_id=track.id,
        release_id=release.id,
        mode=mode,
        alpha=alpha,
        model_uri=model_uri,
        source_diff_id=None if source_diff is None else source_diff.id,
        finetune_run_id=finetune_run_id,
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Score:
    """One metric of one task, as an evaluation reports it."""

    task: str
    metric: str
    filter: str
    value: float
    stderr: float | None
    n: int | None
    harness_version: str
    task_version: str | None


def add_eval_results(
    session: Session,
    *,
    scores: list[Score],
    subject: str,
    candidate: Candidate | None = None,
    release: Release | None = None,
) -> list[EvalResult]:
    """Record the scores of one model: a candidate, or a release's bare base (`subject` says which)."""
    rows = [
        EvalResult(
            candidate_id=None if candidate is None else candidate.id,
            release_id=None if release is None else release.id,
            subject=subject,
            **vars(s),
        )
        for s in scores
    ]
    session.add_all(rows)
    session.flush()
    return rows


def add_promotion(
    session: Session,
    *,
    track: Track,
    channel: str,
    decision: str,
    to_candidate: Candidate | None,
    reasons: list[str],
    actor: str,
) -> Promotion:
    """Record a gate decision (promote, reject, rollback) as a new row; the champion is the newest
    promoted or rolled-back-to candidate of the channel."""
    current = champion(session, track=track, channel=channel)
    row = Promotion(
        track_id=track.id,
        channel=channel,
        decision=decision,
        from_candidate_id=None if current is None else current.id,
        to_candidate_id=None if to_candidate is None else to_candidate.id,
        reasons=reasons,
        actor=actor,
    )
    session.add(row)
    session.flush()
    return row


def _reign(session: Session, *, track: Track, channel: str) -> Promotion | None:
    """The promotion (or rollback) that made the current champion of a channel."""
    query = select(Promotion).where(
        Promotion.track_id == track.id, Promotion.channel == channel, Promotion.decision != "reject"
    )
    return session.scalars(query.order_by(Promotion.id.desc()).limit(1)).one_or_none()


def champion(session: Session, *, track: Track, channel: str) -> Candidate | None:
    """The candidate currently promoted on a track's channel, if any."""
    latest = _reign(session, track=track, channel=channel)
    if latest is None or latest.to_candidate_id is None:
        return None
    return session.get(Candidate, latest.to_candidate_id)


def previous_champion(session: Session, *, track: Track, channel: str) -> Candidate:
    """The champion the current one replaced: where a rollback goes.

    Raises:
        NotFoundError: the channel has no champion, or its champion replaced nobody.
    """
    latest = _reign(session, track=track, channel=channel)
    if latest is None or latest.from_candidate_id is None:
        raise NotFoundError(f"track {track.name} has no earlier champion on channel {channel!r} to roll back to.")
    return get_candidate(session, candidate_id=latest.from_candidate_id)


def blob_owners(session: Session) -> dict[str, list[str]]:
    """Every blob some row points to, with the rows that point to it (`diff-3:diff.json`)."""
    owners: dict[str, list[str]] = {}
    for diff_id, path, sha in session.execute(select(DiffFile.diff_id, DiffFile.path, DiffFile.blob_sha256)):
        owners.setdefault(sha, []).append(f"diff-{diff_id}:{path}")
    return owners
