"""Data access for the registry's artifacts: tracks, releases and diffs, and the
public ids (`diff-12`) that name them. What a recycle run records (candidates, fine-tune runs, eval
results, promotions) is in :mod:`graftwork.storage.runs`.

Every function takes a Session and only adds and flushes: the caller's `session_scope()` commits.
Artifact rows are only ever inserted; registering something that is already there returns the
existing row, also when two processes race to insert it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import DatabaseError, NotFoundError
from ..terms import ArtifactKind
from .models import (
    Base,
    Candidate,
    Diff,
    DiffFile,
    EvalResult,
    FinetuneRun,
    Promotion,
    Release,
    Track,
    TrackSpecVersion,
)

Artifact = Release | Diff | Candidate | Promotion
_MODELS: dict[ArtifactKind, type[Artifact]] = {
    ArtifactKind.RELEASE: Release,
    ArtifactKind.DIFF: Diff,
    ArtifactKind.CANDIDATE: Candidate,
    ArtifactKind.PROMOTION: Promotion,
}
M = TypeVar("M", bound=Base)


def kind_of(row: Artifact) -> ArtifactKind:
    """The kind of an artifact row."""
    return next(kind for kind, model in _MODELS.items() if isinstance(row, model))


def public_id(row: Artifact) -> str:
    """The id a user types: `KIND-N`, e.g. `diff-12`."""
    return f"{kind_of(row)}-{row.id}"


def insert_or_get(
    session: Session, model: type[M], *, unique: tuple[str, ...], values: dict[str, Any]
) -> tuple[M, bool]:
    """Insert a row unless one with the same `unique` values exists; return the row and whether it is new.

    Raises:
        DatabaseError: the database is neither SQLite nor PostgreSQL.
    """
    table = model.__table__
    stmt = _insert(session, model).values(**values).on_conflict_do_nothing(index_elements=list(unique))
    new_id = session.execute(stmt.returning(table.c.id)).scalar_one_or_none()
    where = [getattr(model, column) == values[column] for column in unique]
    return session.scalars(select(model).where(*where)).one(), new_id is not None


INSERT_ROWS = 500
"""Rows per INSERT of `insert_missing`: a few thousand parameters, far below SQLite's and PostgreSQL's limits."""


def insert_missing(session: Session, model: type[M], *, unique: str, rows: list[dict[str, Any]]) -> set[Any]:
    """Insert each of `rows` whose `unique` column's value is in no row yet, `INSERT_ROWS` to a statement;
    return the values of those inserted. Of rows that share a value, only the first is inserted.

    Rows go in in the order of their values, so that two transactions inserting some of the same values wait
    for each other in one order and never deadlock.

    Raises:
        DatabaseError: the database is neither SQLite nor PostgreSQL.
    """
    firsts: dict[Any, dict[str, Any]] = {}
    for row in rows:
        firsts.setdefault(row[unique], row)
    ordered = [firsts[value] for value in sorted(firsts)]
    column = model.__table__.c[unique]
    inserted: set[Any] = set()
    for begin in range(0, len(ordered), INSERT_ROWS):
        stmt = _insert(session, model).values(ordered[begin : begin + INSERT_ROWS])
        inserted |= set(session.scalars(stmt.on_conflict_do_nothing(index_elements=[unique]).returning(column)))
    return inserted


def _insert(session: Session, model: type[M]) -> Any:
    """The dialect's INSERT for `model`, which knows ON CONFLICT DO NOTHING.

    Raises:
        DatabaseError: the database is neither SQLite nor PostgreSQL.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql  # the dialect in use is loaded already

        return postgresql.insert(model)
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(model)
    raise DatabaseError(f"the registry supports SQLite and PostgreSQL, not {dialect}.", url=dialect)


def save_track(session: Session, *, name: str, spec: dict[str, Any], digest: str) -> tuple[Track, bool]:
    """Create the track `name` with `spec` as its version 1, or, when `digest` (the spec's version hash,
    `tasks.track.spec_digest`) differs from its newest version's, add the next version and make it the track's
    spec (earlier versions stay, for the candidates made with them).

    Returns the track and whether it is new.
    """
    track, new = insert_or_get(session, Track, unique=("name",), values={"name": name, "spec": spec})
    newest = newest_spec(session, track=track)
    if newest is None or newest.sha256 != digest:
        version = 1 if newest is None else newest.version + 1
        session.add(TrackSpecVersion(track_id=track.id, version=version, spec=spec, sha256=digest))
        if track.spec != spec:
            track.spec = spec
        session.flush()
    return track, new


def newest_spec(session: Session, *, track: Track) -> TrackSpecVersion | None:
    """The track's newest spec version (None only while a new track's first is being saved)."""
    query = select(TrackSpecVersion).where(TrackSpecVersion.track_id == track.id)
    return session.scalars(query.order_by(TrackSpecVersion.version.desc()).limit(1)).one_or_none()


def spec_version(session: Session, *, track: Track, spec: dict[str, Any], digest: str) -> TrackSpecVersion:
    """The track's version whose hash is `digest` (of the spec `spec` a run was made with). When the registry holds none
    (a spec stored before specs were versioned, which the run re-validated with today's defaults), it is added
    as the next version, so that the candidate still says exactly what made it; the track's current spec is
    left as it is."""
    query = select(TrackSpecVersion).where(TrackSpecVersion.track_id == track.id, TrackSpecVersion.sha256 == digest)
    found = session.scalars(query.order_by(TrackSpecVersion.version.desc()).limit(1)).first()
    if found is None:
        newest = newest_spec(session, track=track)
        found = TrackSpecVersion(
            track_id=track.id, version=1 if newest is None else newest.version + 1, spec=spec, sha256=digest
        )
        session.add(found)
        session.flush()
    return found


def list_tracks(session: Session) -> list[Track]:
    """Every track, by name."""
    return list(session.scalars(select(Track).order_by(Track.name)))


def get_track(session: Session, *, name: str) -> Track:
    """The track called `name`.

    Raises:
        NotFoundError: no such track (the message lists the tracks there are).
    """
    track = session.scalars(select(Track).where(Track.name == name)).one_or_none()
    if track is None:
        known = ", ".join(session.scalars(select(Track.name).order_by(Track.name))) or "none yet"
        raise NotFoundError(
            f"no track named {name!r} in the registry (tracks: {known}); add it with `graft track add FILE`.",
            ref=name,
        )
    return track


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
    row, new = insert_or_get(session, Diff, unique=("track_id", "key"), values=values)
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
    if kind not in set(ArtifactKind) or not number.isdigit():
        examples = ", ".join(f"{k}-1" for k in ArtifactKind)
        raise NotFoundError(f"{ref!r} is not a registry id; ids look like {examples}.", ref=ref)
    return by_id(session, ArtifactKind(kind), int(number))


def by_id(session: Session, kind: ArtifactKind, number: int) -> Artifact:
    """The artifact of `kind` with id `number`.

    Raises:
        NotFoundError: there is none.
    """
    row = cast(Artifact | None, session.get(_MODELS[kind], number))
    if row is None:
        raise NotFoundError(
            f"no {kind} with id {number} in the registry; `graft registry list` shows what there is.",
            ref=f"{kind}-{number}",
        )
    return row


def get_diff(session: Session, *, ref: str) -> Diff:
    """The diff a public id names; a bare number is taken as a diff id.

    Raises:
        NotFoundError: no such diff.
    """
    return cast(Diff, _of_kind(session, ref=ref, kind=ArtifactKind.DIFF))


def get_candidate(session: Session, *, ref: str) -> Candidate:
    """The candidate a public id names; a bare number is taken as a candidate id.

    Raises:
        NotFoundError: no such candidate.
    """
    return cast(Candidate, _of_kind(session, ref=ref, kind=ArtifactKind.CANDIDATE))


def _of_kind(session: Session, *, ref: str, kind: ArtifactKind) -> Artifact:
    row = get(session, ref=ref if "-" in ref else f"{kind}-{ref}")
    if kind_of(row) is not kind:
        raise NotFoundError(f"{ref} is a {kind_of(row)}, not a {kind}.", ref=ref)
    return row


def get_release(session: Session, *, release_id: int) -> Release:
    """A release by id.

    Raises:
        NotFoundError: no such release.
    """
    return cast(Release, by_id(session, ArtifactKind.RELEASE, release_id))


def list_artifacts(session: Session, *, track: Track | None = None, kind: ArtifactKind | None = None) -> list[Artifact]:
    """Artifacts, oldest first, of one kind or all, on one track or all."""
    order = list(ArtifactKind)
    rows: list[Artifact] = []
    for k in [kind] if kind else order:
        model = _MODELS[k]
        query = select(model)
        if track is not None:
            query = query.where(model.track_id == track.id)
        rows.extend(session.scalars(query))
    return sorted(rows, key=lambda r: (r.created_at, order.index(kind_of(r)), r.id))


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


def diffs_of(session: Session, *, track: Track) -> list[Diff]:
    """A track's diffs, in the order they were registered."""
    return list(session.scalars(select(Diff).where(Diff.track_id == track.id).order_by(Diff.id)))


def blob_owners(session: Session) -> dict[str, list[str]]:
    """Every blob some row points to, with the rows that point to it (`diff-3:diff.json`,
    `finetune-run-2:loss-curve`, `eval-result-7:samples`)."""
    owners: dict[str, list[str]] = {}
    for diff_id, path, sha in session.execute(select(DiffFile.diff_id, DiffFile.path, DiffFile.blob_sha256)):
        owners.setdefault(sha, []).append(f"diff-{diff_id}:{path}")
    curves = select(FinetuneRun.id, FinetuneRun.loss_curve_blob).where(FinetuneRun.loss_curve_blob.is_not(None))
    for run_id, curve in session.execute(curves):
        owners.setdefault(str(curve), []).append(f"finetune-run-{run_id}:loss-curve")
    samples = select(EvalResult.id, EvalResult.samples_blob).where(EvalResult.samples_blob.is_not(None))
    for result_id, blob in session.execute(samples):
        owners.setdefault(str(blob), []).append(f"eval-result-{result_id}:samples")
    return owners
