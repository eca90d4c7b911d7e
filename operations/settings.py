"""Graftwork's settings: the one place that reads the environment (prefix `GRAFT_`), and that hands a copy of
it, changed as asked, to the processes Graftwork starts."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # the registry's modules (SQLAlchemy, Alembic) load when a registry is opened
    from ..storage import Registry
    from ..storage.releases import RetryPolicy


class GraftSettings(BaseSettings):
    """Settings read from `GRAFT_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="GRAFT_", frozen=True)

    data_dir: Path = Field(
        default=Path("~/.graftwork").expanduser(),
        description="Where Graftwork keeps its data: models, diffs, the embedded database and blob store.",
    )
    database_url: str | None = Field(
        default=None,
        description="The registry database: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
        "(default: SQLite at DATA_DIR/registry.db).",
    )
    blob_url: str | None = Field(
        default=None,
        description="The blob store: a folder or any fsspec URL such as s3://bucket/prefix (default: DATA_DIR/blobs).",
    )
    prefect_host: str = Field(
        default="127.0.0.1",
        description="Where the data dir's own Prefect server listens (no PREFECT_API_URL set). Beyond loopback, "
        "`graft serve` and `graft ui` need PREFECT_API_AUTH_STRING.",
    )
    prefect_port: int = Field(
        default=4200,
        ge=1,
        le=65535,
        description="The port of the data dir's own Prefect server, its API and UI (no PREFECT_API_URL set).",
    )
    prefect_startup_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a command waits for the local Prefect server it starts (no PREFECT_API_URL set).",
    )
    retry_limit: int = Field(
        default=3, ge=1, description="Runs a release gets before it waits for `graft track retry`."
    )
    retry_backoff_seconds: float = Field(
        default=120.0, ge=0, description="Wait after a release's first failed run; doubled after each next one."
    )
    stale_after_seconds: float = Field(
        default=600.0, gt=0, description="A run that has not reported for this long has died (and is run again)."
    )
    heartbeat_seconds: float = Field(default=30.0, gt=0, description="How often a running release reports.")
    pool_gpus: int = Field(
        default=8, ge=1, description="GPUs of one GPU-pool worker: the most processes a track's fine-tune may launch."
    )
    pool_gpu_memory_gib: float = Field(
        default=80.0,
        gt=0,
        description="Memory of each of those GPUs, GiB: a track's fine-tune fits when each process needs less "
        "(`graft plan` shows the figures; `graft track add` refuses a track that does not fit).",
    )
    cuda_visible_devices: str | None = Field(
        default=None,
        validation_alias="CUDA_VISIBLE_DEVICES",
        description="CUDA's own variable, not GRAFT_'s: the GPUs this worker may lease, as the machine numbers them.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The secret the Hub sends in X-Webhook-Secret; `graft webhook` refuses to start without it.",
    )

    def child_environment(self, *, drop: Collection[str] = (), **extra: str) -> dict[str, str]:
        """`child_environment`, with this data dir (`GRAFT_DATA_DIR`): a child works where this command does."""
        return child_environment(drop=drop, GRAFT_DATA_DIR=str(self.data_dir), **extra)

    @property
    def registry_database_url(self) -> str:
        """The database URL in effect."""
        return self.database_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def registry_blob_url(self) -> str:
        """The blob store URL in effect."""
        return self.blob_url or str(self.data_dir / "blobs")


def child_environment(*, drop: Collection[str] = (), **extra: str) -> dict[str, str]:
    """The environment for a process Graftwork starts: this process's, without the variables `drop` names, and
    with `extra` set."""
    return {**{name: value for name, value in os.environ.items() if name not in drop}, **extra}


@dataclass(frozen=True)
class Workspace:
    """What a flow's steps need of the settings: the data dir and where the registry lives. A flow reads
    the settings once (`Workspace.from_settings`) and hands this down to each step."""

    data_dir: Path
    database_url: str
    blob_url: str
    retry_limit: int
    retry_backoff_seconds: float
    stale_after_seconds: float
    heartbeat_seconds: float
    visible_gpus: str | None = None

    @classmethod
    def from_settings(cls, settings: GraftSettings | None = None) -> Workspace:
        """The workspace the settings (by default: the environment's) name."""
        settings = settings or GraftSettings()
        return cls(
            settings.data_dir,
            settings.registry_database_url,
            settings.registry_blob_url,
            retry_limit=settings.retry_limit,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            stale_after_seconds=settings.stale_after_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            visible_gpus=settings.cuda_visible_devices,
        )

    @classmethod
    def at(cls, data_dir: Path | None) -> Workspace:
        """The environment's workspace, with its data dir replaced by `data_dir` when one is given (the
        database and blob store follow it unless GRAFT_DATABASE_URL / GRAFT_BLOB_URL name others)."""
        return cls.from_settings(None if data_dir is None else GraftSettings(data_dir=data_dir))

    def registry(self) -> Registry:
        """The open registry (migrated on first use; one per process).

        Raises:
            DatabaseError, SchemaTooNewError: as `open_registry`.
        """
        from ..storage import open_registry

        return open_registry(database_url=self.database_url, blob_url=self.blob_url)

    def gpus(self) -> list[str]:
        """The GPUs this worker may lease, as the machine names them (`tasks.training.gpus.machine_gpus`)."""
        from ..tasks.training.gpus import machine_gpus

        return machine_gpus(visible=self.visible_gpus)

    def retry_policy(self) -> RetryPolicy:
        """How this workspace's failed runs are run again."""
        from ..storage.releases import RetryPolicy

        return RetryPolicy(
            limit=self.retry_limit,
            backoff=timedelta(seconds=self.retry_backoff_seconds),
            stale_after=timedelta(seconds=self.stale_after_seconds),
        )
