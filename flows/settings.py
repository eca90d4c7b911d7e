"""Graftwork's settings: the one place that reads the environment (prefix `GRAFT_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GraftSettings(BaseSettings):
    """Settings read from `GRAFT_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="GRAFT_", frozen=True)

    data_dir: Path = Field(
        default=Path("~/.graftwork").expanduser(),
        description="Where Graftwork keeps its data: models, diffs, the embedded database and blob store.",
    )
