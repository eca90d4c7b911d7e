"""Alembic environment: runs the registry's revisions on the engine handed over by `storage.db`.

Concurrent upgrades queue on a lock (a PostgreSQL advisory lock; on SQLite the `BEGIN IMMEDIATE`
that `storage.db` issues), and the current revision is read after the lock is held, so only one
process migrates and the others find nothing left to do.
"""

from __future__ import annotations

from alembic import context

from storage.models import Base

MIGRATION_LOCK = 0x67726166  # "graf"


def run_migrations() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            context.run_migrations()


run_migrations()
