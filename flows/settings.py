"""Graftwork's settings: the one place that reads the environment (prefix `GRAFT_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The secret the Hub sends in X-Webhook-Secret; `graft webhook` refuses to start without it.",
    )

    @property
    def registry_database_url(self) -> str:
        """The database URL in effect."""
        return self.database_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def registry_blob_url(self) -> str:
        """The blob store URL in effect."""
        return self.blob_url or str(self.data_dir / "blobs")
