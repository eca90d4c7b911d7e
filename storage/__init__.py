"""Persistence: the registry's tables (`models`), engines and sessions (`db`), data access for its
artifacts (`registry`) and for what a recycle run records (`runs`), a track at a glance (`status`), rows as
plain data for `--json` (`plain`), the content-addressed blob store (`blobs`) and the Alembic revisions
(`migrations/`). No torch, and nothing of `tasks`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlalchemy import Engine

from .blobs import BlobStore
from .db import ensure_schema, make_engine


@dataclass(frozen=True)
class Registry:
    """An open registry: the database engine and the blob store."""

    engine: Engine
    store: BlobStore


@functools.cache
def open_registry(*, database_url: str, blob_url: str) -> Registry:
    """Open the registry at a database URL and a blob store URL, migrating its database to the head
    revision first. One registry (one engine and its connection pool) per pair of URLs per process.

    Raises:
        DatabaseError: the database cannot be reached.
        SchemaTooNewError: the database was migrated by a newer Graftwork.
    """
    engine = make_engine(database_url)
    ensure_schema(engine)
    return Registry(engine=engine, store=BlobStore(blob_url))
