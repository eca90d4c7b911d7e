"""Corrupt or wrong storage is one sentence naming the file or URL and what to do, never a traceback,
and a registry file that is not a database is never migrated over (nor is anything written to it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from tests.registry.conftest import add_track

runner = CliRunner()


def _fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit | None), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _point_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database: Path) -> None:
    monkeypatch.setenv("GRAFT_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("GRAFT_BLOB_URL", str(tmp_path / "blobs"))


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", "is empty"),
        (b"registry backup, see runbook\n" * 40, "is not a SQLite database (its first bytes are not SQLite's header)"),
    ],
    ids=["empty", "garbage-header"],
)
def test_a_registry_file_that_is_not_a_database_is_named_and_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, what: str
) -> None:
    database = tmp_path / "registry.db"
    database.write_bytes(content)
    _point_at(monkeypatch, tmp_path, database)
    for command in (["registry", "list"], ["registry", "verify"], ["registry", "show", "diff-1"], ["db", "upgrade"]):
        assert _fails(*command) == (
            f"error: the registry database {database} {what}; it is left as it is. Restore it from a backup, or move "
            "it away to start a new registry there."
        )
    assert database.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["registry.db"]


def test_a_registry_file_cut_in_half_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diff_dir: Path) -> None:
    database = tmp_path / "registry.db"
    _point_at(monkeypatch, tmp_path, database)

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    add_track(run, tmp_path, "demo")
    assert "registered diff-1" in run("registry", "import", str(diff_dir), "--track", "demo")
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with database.open("r+b") as f:
        f.truncate(database.stat().st_size // 2)
    for command in (["registry", "list"], ["registry", "verify"], ["registry", "show", "diff-1"]):
        error = _fails(*command)
        assert error.startswith(f"error: the database at sqlite:///{database} "), error
        assert error.endswith("Restore it from a backup.") or error.endswith("restored from a backup."), error


def test_an_unknown_database_driver_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_DATABASE_URL", "mysqlx://graft@db/graft")
    monkeypatch.setenv("GRAFT_BLOB_URL", str(tmp_path / "blobs"))
    assert _fails("registry", "list") == (
        "error: no driver for mysqlx (Can't load plugin: sqlalchemy.dialects:mysqlx); install it or use another URL."
    )


def test_a_blob_store_that_is_a_file_or_a_blob_that_is_a_folder_is_named(
    graft,
    diff_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    add_track(graft, tmp_path, "demo")
    graft("registry", "import", str(diff_dir), "--track", "demo")
    blobs = tmp_path / "blobs"
    blob = next(p for p in (blobs / "sha256").rglob("*") if p.is_file())
    blob.unlink()
    blob.mkdir()  # a folder where the blob should be
    verified = runner.invoke(app, ["registry", "verify"])
    assert verified.exit_code == 1 and "Traceback" not in verified.output
    assert f"corrupt {blob.name}" in verified.output or blob.name in verified.output
    exported = _fails("registry", "export", "1", "-o", str(tmp_path / "out"))
    assert exported.startswith(f"error: blob {blob.name} of diff-1:") and exported.endswith(
        f" is a folder in the blob store {blobs}, not a file: {blob}. Move it away and restore the blob from a backup."
    )
    assert not (tmp_path / "out").exists()

    regular = tmp_path / "not-a-folder"
    regular.write_text("")
    monkeypatch.setenv("GRAFT_BLOB_URL", str(regular))
    assert _fails("registry", "list") == (
        f"error: the blob store {regular} is not a folder: Not a directory. Point GRAFT_BLOB_URL at a folder (or an "
        "fsspec URL of one)."
    )
