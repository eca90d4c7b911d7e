"""Alembic environment: runs the registry's revisions on the engine handed over by `storage.db`.

On SQLite, foreign keys are off while the revisions run (batch revisions rebuild tables) and are
checked as a whole before the transaction commits. All revisions run in one transaction, on SQLite too.
Concurrent upgrades queue on a lock (a PostgreSQL advisory lock; on SQLite the `BEGIN IMMEDIATE` that
`storage.db` issues) held until that transaction ends, and the current revision is read after the lock is
held, so only one process migrates and the others find nothing left to do.
"""

from __future__ import annotations

from alembic import context

# Alembic runs this file by path, not as a module of the package: absolute imports.
from graftwork.errors import DatabaseError
from graftwork.storage.models import Base

MIGRATION_LOCK = 0x67726166  # "graf"


def run_migrations() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.driver_connection
        if sqlite:  # batch revisions rebuild tables, and SQLite would check foreign keys when it drops the old one
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            # transactional_ddl: SQLite runs DDL in a transaction, but Alembic assumes it cannot and then commits
            # after each revision, which let go of the lock between revisions: a second first start read revision
            # 0002 in that gap and ran 0003 again ("duplicate column name: position", 1 in 25 rounds under load)
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=sqlite,
                compare_type=True,
                transactional_ddl=True,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                context.run_migrations()
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    url = engine.url.render_as_string(hide_password=True)
                    raise DatabaseError(
                        f"migrating {url} left rows whose foreign keys point nowhere, so it was rolled back; "
                        "restore the database from a backup or report it.",
                        url=url,
                    )
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


run_migrations()
