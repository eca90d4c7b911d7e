"""A commit never points at a blob that is gone: `gc` keeps every blob made since the oldest open writer began,
whatever its grace, and a registration stores again, inside the transaction that records it, any blob that left
the store meanwhile. The race is made certain: `gc --grace-hours 0` runs at the instant after the import's last
blob is stored and before its rows are committed."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from graftwork.operations import diffs as ops
from graftwork.storage import Registry
from graftwork.storage.blobs import WRITER_STALE_S, BlobInfo


def _after_each_put(monkeypatch: pytest.MonkeyPatch, registry: Registry, then: Any) -> list[str]:
    """Call `then(blob)` after each blob the store puts; return the blobs put."""
    put = registry.store.put
    stored: list[str] = []

    def put_then(src: BinaryIO) -> BlobInfo:
        blob = put(src)
        stored.append(blob.name)
        then(blob)
        return blob

    monkeypatch.setattr(registry.store, "put", put_then)
    return stored


def test_gc_with_no_grace_during_an_import_removes_none_of_its_blobs(
    registry: Registry, diff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[int] = []
    stored = _after_each_put(
        monkeypatch, registry, lambda _: removed.append(ops.gc(registry, grace=timedelta(0)).blobs)
    )
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    assert stored and removed == [0] * len(stored)  # every gc ran between a put and the commit, and kept them
    report = ops.verify(registry)
    assert report.ok and report.checked == len(set(stored))
    assert ops.gc(registry, grace=timedelta(0)).blobs == 0  # owned now
    assert done.new and list(registry.store.temporaries()) == []


def test_a_blob_that_left_the_store_before_the_commit_is_stored_again(
    registry: Registry, diff_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A gc that had listed the blob before the writer began deletes it anyway: the registration puts it back
    before it commits, and the diff exports whole."""
    gone: list[str] = []

    def delete_first(blob: BlobInfo) -> None:
        if not gone:
            registry.store.delete(blob.name)
            gone.append(blob.name)

    _after_each_put(monkeypatch, registry, delete_first)
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    assert gone and registry.store.exists(gone[0])
    assert ops.verify(registry).ok
    out = ops.export_diff(registry, ref=done.id, out=tmp_path / "out")
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == sorted(
        p.relative_to(diff_dir) for p in diff_dir.rglob("*") if p.is_file()
    )


def test_an_open_writer_keeps_what_it_stored_and_a_killed_ones_marker_goes_stale(registry: Registry) -> None:
    writers = Path(registry.store.root) / "writers"
    with registry.store.writing():
        assert len(list(writers.iterdir())) == 1
        young = registry.store.put(io.BytesIO(b"stored by the open writer"))
        assert ops.gc(registry, grace=timedelta(0)).blobs == 0
    assert list(writers.iterdir()) == []
    assert ops.gc(registry, grace=timedelta(0)).blobs == 1 and not registry.store.exists(young.name)

    orphan = registry.store.put(io.BytesIO(b"an orphan"))
    elsewhere = writers / "killed-elsewhere"  # a writer on another machine, killed an hour ago, silent since
    elsewhere.write_text(json.dumps({"start": time.time() - 3600, "host": "another-machine", "pid": 1}))
    old = time.time() - WRITER_STALE_S - 1
    os.utime(elsewhere, (old, old))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = writers / "killed-here"  # a writer of this machine whose process is gone, its marker fresh
    here.write_text(json.dumps({"start": time.time() - 60, "host": socket.gethostname(), "pid": int(dead.stdout)}))
    assert ops.gc(registry, grace=timedelta(0)).blobs == 1
    assert list(writers.iterdir()) == [] and not registry.store.exists(orphan.name)
