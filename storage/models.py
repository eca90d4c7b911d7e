"""The registry's tables, as SQLAlchemy 2.0 typed ORM models.

Rows that describe an artifact (release, diff and its files, candidate, eval result, promotion)
subclass :class:`Immutable`: once flushed, a change to one of them is refused at flush time, so a
promotion or a rollback is always a new row. The schema is created and changed only by the Alembic
revisions in `storage/migrations`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from ..terms import ActorKind, CandidateKind, EvalSubject, GateDecision, RecycleMode, ReleaseState

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256 = String(64)


def vocabulary(kind: type[StrEnum], *, name: str) -> Enum:
    """A column type for one of the domain's enums: stored as its value in a VARCHAR(32) with a CHECK
    constraint naming the allowed values, so the database refuses any other word too."""
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


def _now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python (SQLite stores it without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base: one metadata with a constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Immutable:
    """Marks an artifact row: written once, never updated (enforced in `storage.db`)."""


class Track(Base):
    """A continuous-development line: its validated YAML spec, as JSON."""

    __tablename__ = "tracks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class TrackSpecVersion(Immutable, Base):
    """One version of a track's spec: `graft track add` with a changed file adds one (the track's `spec` is
    the newest), and a candidate points at the version it was made with, so old candidates keep theirs."""

    __tablename__ = "track_specs"
    __table_args__ = (UniqueConstraint("track_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class Release(Immutable, Base):
    """One base-model version seen on a track: a repo id pinned to a revision.

    `position` orders a track's releases as their source does (the commit time of a ref, a repo's
    creation time, a folder's name: a string that sorts); `content_key` is the sha256 over the model
    files it holds, so that a commit that changes none of them is seen for what it is.
    """

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("track_id", "repo_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    repo_id: Mapped[str] = mapped_column(String(400))
    revision: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(400))
    path: Mapped[str | None] = mapped_column(Text)
    position: Mapped[str | None] = mapped_column(String(200))
    content_key: Mapped[str | None] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    track: Mapped[Track] = relationship()
    status: Mapped[ReleaseStatus] = relationship(back_populates="release")


class ReleaseStatus(Base):
    """Where a release is in its life (`terms.ReleaseState`): operational, so updated in place.

    `runner` is who runs it now (`host:pid`), `flow_run_id` its Prefect flow run, `heartbeat_at` the last
    sign of life of its run; `attempts` counts its runs, `retry_at` is when a failed one may run again.
    """

    __tablename__ = "release_states"

    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), primary_key=True)
    state: Mapped[ReleaseState] = mapped_column(vocabulary(ReleaseState, name="release_state"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    runner: Mapped[str | None] = mapped_column(String(200))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now, onupdate=_now)

    release: Mapped[Release] = relationship(back_populates="status")


class Diff(Immutable, Base):
    """A stored diff vector Δ = fine-tuned − base, with its provenance and storage figures.

    `key` is the sha256 of the diff's content (its files' raw hashes); a track holds one row per key.
    `parent_id` links Δ_i to Δ_{i−1} of the iterative chain.
    """

    __tablename__ = "diffs"
    __table_args__ = (UniqueConstraint("track_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    key: Mapped[str] = mapped_column(SHA256)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("diffs.id"), index=True)
    base_release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"))
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    finetuned: Mapped[dict[str, Any]]
    base: Mapped[dict[str, Any]]
    tensor_count: Mapped[int] = mapped_column(Integer)
    norms: Mapped[dict[str, Any]]
    codec: Mapped[str] = mapped_column(String(64))
    raw_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    graftwork_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    track: Mapped[Track] = relationship()
    files: Mapped[list[DiffFile]] = relationship(order_by="DiffFile.path")


class DiffFile(Immutable, Base):
    """One file of a diff folder, stored as a blob: its raw hash and size, and the blob's."""

    __tablename__ = "diff_files"
    __table_args__ = (UniqueConstraint("diff_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    diff_id: Mapped[int] = mapped_column(ForeignKey("diffs.id"))
    path: Mapped[str] = mapped_column(String(400))
    raw_sha256: Mapped[str] = mapped_column(SHA256)
    raw_bytes: Mapped[int] = mapped_column(BigInteger)
    blob_sha256: Mapped[str] = mapped_column(SHA256, index=True)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    codec: Mapped[str] = mapped_column(String(64))


class FinetuneRun(Immutable, Base):
    """A completed fine-tuning run of a release: its recipe and the sha256 of its data file, where and how fast
    it ran, how its loss went.

    The loss curve (a JSON list of [step, loss]) is a blob in the blob store, `loss_curve_blob` its sha256.
    A candidate points at the run that made it (`candidates.finetune_run_id`).
    """

    __tablename__ = "finetune_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    recipe: Mapped[dict[str, Any]]
    steps: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    processes: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
    tokens_per_second: Mapped[float] = mapped_column(Float)
    final_loss: Mapped[float | None] = mapped_column(Float)
    loss_curve_blob: Mapped[str | None] = mapped_column(SHA256)
    data_sha256: Mapped[str | None] = mapped_column(SHA256)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Candidate(Immutable, Base):
    """A model produced for a release of a track: what made it (`kind`), from which Δ and why (`source_diff_id`,
    `carry_reason`; for an `auto` track, the pre-check and probe that chose its start: `start_choice`), and where
    its folder is."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    kind: Mapped[CandidateKind] = mapped_column(vocabulary(CandidateKind, name="candidate_kind"))
    mode: Mapped[RecycleMode | None] = mapped_column(vocabulary(RecycleMode, name="recycle_mode"))
    """Which Δ Algorithm 1 carried; None for a backport, which is no mode of it."""
    alpha: Mapped[float] = mapped_column(Float)
    source_diff_id: Mapped[int | None] = mapped_column(ForeignKey("diffs.id", use_alter=True))
    carry_reason: Mapped[str | None] = mapped_column(Text)
    start_choice: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    finetune_run_id: Mapped[int | None] = mapped_column(ForeignKey("finetune_runs.id"))
    spec_id: Mapped[int | None] = mapped_column(ForeignKey("track_specs.id"))
    model_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    track: Mapped[Track] = relationship()
    release: Mapped[Release] = relationship()
    finetune_run: Mapped[FinetuneRun | None] = relationship()
    spec: Mapped[TrackSpecVersion | None] = relationship()


class EvalResult(Immutable, Base):
    """One metric of one lm-eval task on one model (a candidate, or a release's bare base)."""

    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), index=True)
    release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"), index=True)
    subject: Mapped[EvalSubject] = mapped_column(vocabulary(EvalSubject, name="eval_subject"))
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(200))
    filter: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    stderr: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(Integer)
    harness_version: Mapped[str] = mapped_column(String(64))
    task_version: Mapped[str | None] = mapped_column(String(64))
    samples_blob: Mapped[str | None] = mapped_column(SHA256)
    fingerprint: Mapped[dict[str, Any] | None]
    setup_sha256: Mapped[str | None] = mapped_column(SHA256)
    model_sha256: Mapped[str | None] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class Promotion(Immutable, Base):
    """A gate decision on a track's channel: promote, reject or roll back, with its reasons."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    channel: Mapped[str] = mapped_column(String(200))
    decision: Mapped[GateDecision] = mapped_column(vocabulary(GateDecision, name="gate_decision"))
    from_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    to_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    reasons: Mapped[list[Any]]
    actor_kind: Mapped[ActorKind] = mapped_column(vocabulary(ActorKind, name="actor_kind"))
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    track: Mapped[Track] = relationship()


class ApprovalRequest(Immutable, Base):
    """A candidate that passed its gate's rules on a channel and waits for a person to approve or reject it
    (`gate.approval: required`); the run that asked, when it was a Prefect run."""

    __tablename__ = "approval_requests"
    __table_args__ = (UniqueConstraint("candidate_id", "channel"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"))
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    channel: Mapped[str] = mapped_column(String(200))
    reasons: Mapped[list[Any]]
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    candidate: Mapped[Candidate] = relationship()


class WebhookDelivery(Base):
    """A Hub webhook delivery for one track (or for none: ignored), recorded once so that a duplicate starts
    nothing new: the receiver's outbox. `started_at` is set when the track's run was started (`flow_run_id`);
    until then `attempts` counts the tries that failed, `last_error` says why and `retry_at` when to try again.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    track_id: Mapped[int | None] = mapped_column(ForeignKey("tracks.id"))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
