"""`graft db upgrade` and `graft registry ...`, end to end through the CLI on both databases."""

from __future__ import annotations

import re
from pathlib import Path

from graftwork.storage.db import head_revision
from tests.registry.conftest import add_track


def test_the_registry_commands_end_to_end(graft, diff_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert f"revision empty → {head_revision()}" in graft("db", "upgrade")
    assert f"revision {head_revision()} → {head_revision()}" in graft("db", "upgrade")
    assert graft("registry", "list").strip() == "nothing registered yet"
    add_track(graft, tmp_path, "demo")
    add_track(graft, tmp_path, "other")
    first = graft("registry", "import", str(diff_dir), "--track", "demo")
    assert "registered diff-1 on track demo" in first and "stored diff-00001-of-00001.safetensors" in first
    assert "already registered as diff-1" in graft("registry", "import", str(diff_dir), "--track", "demo")
    second = graft("registry", "import", str(diff_dir), "--track", "other", "--parent", "diff-1")
    # PostgreSQL spends a sequence value on the refused duplicate insert: ids are unique, not consecutive.
    child = re.search(r"registered (diff-\d+) on track other", second).group(1)  # type: ignore[union-attr]
    listing = graft("registry", "list", "--kind", "diff", "--track", "other").splitlines()
    assert len(listing) == 1 and listing[0].startswith(f"{child} ")
    shown = graft("registry", "show", child)
    assert f"lineage: {child} ← diff-1" in shown and "codec gw-bplane-zstd-v1" in shown
    assert "file diff.json:" in shown
    assert f"{child}     base" in graft("registry", "lineage", "other")
    graft("registry", "export", child.removeprefix("diff-"), "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "diff.json").read_bytes() == (diff_dir / "diff.json").read_bytes()
    assert "0 missing, 0 corrupt" in graft("registry", "verify")
    assert "removed 0 orphan blob(s)" in graft("registry", "gc", "--grace-hours", "0")


def test_verify_exits_1_and_names_the_row_of_a_corrupt_blob(graft, diff_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    graft("registry", "import", str(diff_dir), "--track", "demo")
    blob = max((tmp_path / "blobs" / "sha256").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    output = graft("registry", "verify", code=1)
    assert f"corrupt: blob {blob.name} of diff-1:diff-00001-of-00001.safetensors" in output
    assert "1 corrupt" in output


def test_user_errors_are_one_line(graft) -> None:  # type: ignore[no-untyped-def]
    assert "error: no diff with id 9" in graft("registry", "export", "9", "-o", "x", code=1)
    assert "error: no track named 'nope'" in graft("registry", "lineage", "nope", code=1)
    assert "error: 'bogus' is not a registry id" in graft("registry", "show", "bogus", code=1)


def test_importing_into_an_unknown_track_is_refused_and_stores_nothing(graft, diff_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    error = graft("registry", "import", str(diff_dir), "--track", "new", code=1)
    assert "error: no track named 'new' in the registry (tracks: demo); add it with `graft track add FILE`." in error
    assert "Traceback" not in error
    assert not list((tmp_path / "blobs" / "sha256").rglob("*"))
    assert graft("track", "list").splitlines() == [
        "track                    source     mode       channel",
        "demo                     hub-repos  iterative  production",
    ]
    assert graft("registry", "list").strip() == "nothing registered yet"
