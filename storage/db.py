"""Engines, the one `session_scope()`, and the schema's Alembic revisions.

SQLite (the embedded default) runs in WAL mode with foreign keys on, and every transaction begins
with `BEGIN IMMEDIATE`, so two processes that write at once queue on the lock instead of failing on a
stale snapshot. PostgreSQL is the production database.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import DatabaseError, ImmutableRowError, SchemaTooNewError
from ..fs import folder_lock
from .models import Immutable

if TYPE_CHECKING:  # Alembic loads when a database is migrated, not when a command reads the registry
    from alembic.config import Config

MIGRATIONS = Path(str(resources.files("graftwork.storage") / "migrations"))
VERSION_TABLE = "alembic_version"
REVISION_LINE = re.compile(r"""^(revision|down_revision)\b[^=\n]*=\s*(["']?)([^"'\n]*?)\2\s*$""", re.M)
"""A revision file's `revision = "0007"` or `down_revision: str | None = None` line: its name, quote and value."""
SQLITE_BUSY_TIMEOUT_S = 60
SQLITE_HEADER = b"SQLite format 3\x00"


def make_engine(url: str) -> Engine:
    """An engine for a database URL (`sqlite:///PATH` or `postgresql+psycopg://...`).

    Raises:
        DatabaseError: the URL cannot be parsed or names a driver that is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise DatabaseError(
            f"{url!r} is not a database URL: {e}. Use sqlite:///PATH or postgresql+psycopg://...",
            url=url,
        ) from e
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_sqlite(Path(parsed.database))
            _refuse_non_database(Path(parsed.database))
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except (ImportError, NoSuchModuleError) as e:
        raise DatabaseError(
            f"no driver for {parsed.drivername} ({e}); install it or use another URL.", url=parsed.drivername
        ) from e


def _create_sqlite(path: Path) -> None:
    """Create the SQLite registry file at `path` if there is none, with its header written (and in WAL mode), under
    an exclusive lock on its folder: a first start racing another never sees the other's file before it has a
    header (it would take it for an empty file and refuse it), and the folder gains no lock file."""
    if path.is_file() and path.stat().st_size > 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent):
        if path.exists():
            return  # made by the process that held the lock, or empty (refused next)
        connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


def _refuse_non_database(path: Path) -> None:
    """A SQLite registry file that exists must be a SQLite database: an empty or foreign file would
    otherwise be opened (or migrated over) as a new, empty registry, and what it held would look lost.

    Raises:
        DatabaseError: the file is empty, or does not start with SQLite's header.
    """
    if path.is_dir():
        raise DatabaseError(f"{path} is a folder, not a SQLite database; fix GRAFT_DATABASE_URL.", url=str(path))
    if not path.is_file():
        return
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        what = "is empty" if not header else "is not a SQLite database (its first bytes are not SQLite's header)"
        raise DatabaseError(
            f"the registry database {path} {what}; it is left as it is. Restore it from a backup, or move it away "
            "to start a new registry there.",
            url=str(path),
        )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


_sessions: dict[Engine, sessionmaker[Session]] = {}


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block completes and rolls back when it raises.

    This is the only place that commits; data-access functions only add and flush.

    Raises:
        DatabaseError: the database failed under the block (a damaged file, a lost connection, a
            constraint): the message names the database and what it said.
    """
    factory = _sessions.setdefault(engine, sessionmaker(engine, expire_on_commit=False))
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyDatabaseError as e:
        session.rollback()
        raise DatabaseError(
            f"the database at {_safe(engine)} failed: {e.orig}. Check GRAFT_DATABASE_URL; a damaged SQLite file "
            "is restored from a backup.",
            url=_safe(engine),
        ) from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@event.listens_for(Session, "before_flush")
def _refuse_updates(session: Session, _context: Any, _instances: Any) -> None:
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, Immutable) and (obj in session.deleted or session.is_modified(obj)):
            raise ImmutableRowError(
                f"{type(obj).__name__} {getattr(obj, 'id', '?')} is an immutable artifact row; "
                "record a new row (a promotion or rollback is a new row) instead of changing it.",
                row=f"{type(obj).__name__} {getattr(obj, 'id', '?')}",
            )


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None for an empty database).

    Raises:
        DatabaseError: the database cannot be reached or read, or records more than one revision.
    """
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except OperationalError as e:
        raise DatabaseError(f"cannot reach the database at {_safe(engine)}: {e.orig}", url=_safe(engine)) from e
    except SQLAlchemyDatabaseError as e:
        raise DatabaseError(
            f"the database at {_safe(engine)} cannot be read: {e.orig}. Restore it from a backup.", url=_safe(engine)
        ) from e
    if len(found) > 1:
        raise DatabaseError(
            f"the database at {_safe(engine)} records several schema revisions ({', '.join(sorted(found))}) in "
            f"{VERSION_TABLE}; Graftwork's schema has one line of revisions. Restore it from a backup.",
            url=_safe(engine),
        )
    return found[0] if found else None


@functools.cache
def known_revisions() -> dict[str, str | None]:
    """Every schema revision this version of Graftwork knows, and the one it follows (the `revision` and
    `down_revision` lines of each file of `migrations/versions`, read without loading Alembic, and with a
    pattern rather than `ast`, which CPython 3.11 cannot run from several threads at once: Prefect runs flows in
    threads)."""
    known: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        names = {
            name: None if (quote, value) == ("", "None") else value
            for name, quote, value in REVISION_LINE.findall(path.read_text())
        }
        if names.get("revision"):  # not __init__.py
            known[str(names["revision"])] = names.get("down_revision")
    return known


def head_revision() -> str:
    """The newest schema revision this version of Graftwork knows: the one no other revision follows."""
    known = known_revisions()
    (head,) = set(known) - set(known.values())
    return head


def upgrade(engine: Engine, *, revision: str = "head") -> None:
    """Migrate the database up to `revision` (concurrent callers queue on a lock; one does the work).

    Raises:
        SchemaTooNewError: the database is at a revision this Graftwork does not know.
        DatabaseError: the database cannot be reached.
    """
    from alembic import command

    _refuse_unknown(engine)
    command.upgrade(_alembic_config(engine), revision)


def downgrade(engine: Engine, *, revision: str) -> None:
    """Migrate the database down to `revision` (`base` empties it)."""
    from alembic import command

    command.downgrade(_alembic_config(engine), revision)


def ensure_schema(engine: Engine) -> None:
    """Bring the database to the head revision if it is behind; what every command runs first.

    Raises:
        SchemaTooNewError: the database is at a revision this Graftwork does not know.
        DatabaseError: the database cannot be reached.
    """
    if current_revision(engine) != head_revision():
        upgrade(engine)


def _refuse_unknown(engine: Engine) -> None:
    current = current_revision(engine)
    if current is None:
        return
    if current not in known_revisions():
        raise SchemaTooNewError(
            f"the database at {_safe(engine)} is at schema revision {current}, which this Graftwork "
            f"(newest revision {head_revision()}) does not know: it was written by a newer Graftwork. "
            "Upgrade Graftwork (pip install -U graftwork) instead of using an older one on it.",
            revision=current,
        )


def _safe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
