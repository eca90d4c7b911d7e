"""A full disk, or one that may not be written, is one sentence and nothing half-written: `graft diff -o` and
`graft registry import` onto a real 1 MiB tmpfs (mounted for the test, unmounted after) that a filler file has
all but filled, and `graft diff -o` onto a read-only one. Each runs as a user runs it, in a process of its own.
Where this machine may not mount (no privilege), the tests skip, saying so."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftwork.operations.settings import GraftSettings, Workspace
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.tasks.testbed import Testbed
from tests.service import GRAFT, child_env

ROOM_KIB = 200  # what the filler leaves free: less than a diff of the test bed needs


def _mounted(where: Path, *options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(["size=1m", *options]), "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the full-disk tests need it")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with ROOM_KIB KiB left."""
    for disk in _mounted(tmp_path / "full"):
        (disk / "filler").write_bytes(b"\0" * (1024 - ROOM_KIB) * 1024)
        yield disk


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted(tmp_path / "ro", "ro")


def _graft(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRAFT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_diff_onto_a_full_disk_says_so_and_leaves_nothing(full: Path, testbed: Testbed, tmp_path: Path) -> None:
    m1, m2 = testbed.releases[:2]
    done = _graft("diff", str(m2), str(m1), "-o", str(full / "d"), env=child_env(), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: no space left on the device holding {full / 'd'} while writing d; nothing was left there "
        f"half-written. Free space there (df -h {full}) or choose another place, then run it again."
    )
    assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_a_diff_onto_a_read_only_disk_says_so(read_only: Path, testbed: Testbed, tmp_path: Path) -> None:
    m1, m2 = testbed.releases[:2]
    done = _graft("diff", str(m2), str(m1), "-o", str(read_only / "d"), env=child_env(), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: {read_only / 'd'}: the file system is read-only while making its folder; choose a place you may "
        "write to, or fix its permissions, then run it again."
    )
    assert list(read_only.iterdir()) == []


def test_an_import_onto_a_full_blob_store_says_so_and_registers_nothing(
    full: Path, testbed: Testbed, tmp_path: Path
) -> None:
    m1, m2 = testbed.releases[:2]
    diff = tmp_path / "diff"
    assert _graft("diff", str(m2), str(m1), "-o", str(diff), env=child_env(), cwd=tmp_path).returncode == 0
    env = child_env(GRAFT_DATA_DIR=str(tmp_path / "data"), GRAFT_BLOB_URL=str(full / "blobs"))
    registry = Workspace.from_settings(GraftSettings(data_dir=tmp_path / "data", blob_url=str(full / "blobs")))
    with session_scope(registry.registry().engine) as session:
        rows.save_track(session, name="t", spec={}, digest="0" * 64)
    done = _graft("registry", "import", str(diff), "--track", "t", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: no space left on the device holding {full / 'blobs'} while storing a blob; nothing was left there "
        f"half-written. Free space there (df -h {full}) or choose another place, then run it again."
    )
    assert list((full / "blobs" / "tmp").iterdir()) == []  # no partial blob
    listed = _graft("registry", "list", env=env, cwd=tmp_path)
    assert listed.stdout.strip() == "nothing registered yet"
