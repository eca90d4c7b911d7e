"""Must-holds 1, 3 and 4: lossless round trip, crash safety with gc, corruption caught on read and by verify."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from graftwork.errors import BlobCorruptError, BlobMissingError
from graftwork.operations import diffs as ops
from graftwork.storage import Registry
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import Diff, DiffFile
from graftwork.tasks import engine
from tests.conftest import Family, bits_equal, load_state


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_register_then_export_is_bit_identical(registry: Registry, diff_dir: Path, tmp_path: Path) -> None:
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    out = ops.export_diff(registry, ref=done.id, out=tmp_path / "exported")
    assert _tree(out) == _tree(diff_dir)
    assert load_state(out).keys() == load_state(diff_dir).keys()
    for name, tensor in load_state(diff_dir).items():
        assert bits_equal(load_state(out)[name], tensor), name


def test_the_stored_size_is_the_compressed_size(registry: Registry, diff_dir: Path) -> None:
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    blobs = {b.name: b.size for b in registry.store.blobs()}
    with session_scope(registry.engine) as session:
        diff = rows.get_diff(session, ref=done.id)
        assert diff.raw_bytes == sum(len(b) for b in _tree(diff_dir).values())
        assert diff.stored_bytes == sum(blobs[f.blob_sha256] for f in diff.files) == done.stored_bytes
        shard = next(f for f in diff.files if f.path.endswith(".safetensors"))
        assert shard.stored_bytes < shard.raw_bytes / 2  # an fp32 diff of bf16 models compresses well


def test_a_diff_applies_the_same_after_the_round_trip(
    registry: Registry, diff_dir: Path, bf16_family: Family, tmp_path: Path
) -> None:
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    exported = ops.export_diff(registry, ref=done.id, out=tmp_path / "exported")
    engine.apply(diff=exported, target=bf16_family.base, out=tmp_path / "m")
    want = bf16_family.states["finetuned"]
    got = load_state(tmp_path / "m")
    assert all(bits_equal(got[name], want[name]) for name in want)


def test_registering_twice_gives_one_row_and_keeps_the_lineage(registry: Registry, diff_dir: Path) -> None:
    first = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    again = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    child = ops.register_diff(registry, diff_dir=diff_dir, track="u", parent=first.id)
    assert (first.new, again.new, again.id) == (True, False, first.id)
    with session_scope(registry.engine) as session:
        assert session.scalar(select(func.count()).select_from(Diff)) == 2
        diff = rows.get_diff(session, ref=child.id)
        assert [rows.public_id(d) for d in rows.ancestors(session, diff=diff)] == [first.id]


def _corrupt_largest_blob(registry: Registry) -> str:
    blob = max(registry.store.blobs(), key=lambda b: b.size)
    path = Path(registry.store.path(blob.name))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return blob.name


def test_a_flipped_byte_is_caught_on_read_and_by_verify(registry: Registry, diff_dir: Path, tmp_path: Path) -> None:
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    sha = _corrupt_largest_blob(registry)
    with pytest.raises(BlobCorruptError, match=rf"blob {sha} of {done.id}:diff-00001-of-00001.safetensors is corrupt"):
        ops.export_diff(registry, ref=done.id, out=tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
    report = ops.verify(registry)
    assert report.corrupt == {sha: [f"{done.id}:diff-00001-of-00001.safetensors"]}
    assert report.missing == {} and not report.ok and report.checked == len(set(_tree(diff_dir).values()))


def test_a_missing_blob_is_reported(registry: Registry, diff_dir: Path, tmp_path: Path) -> None:
    done = ops.register_diff(registry, diff_dir=diff_dir, track="t")
    with session_scope(registry.engine) as session:
        manifest = session.scalars(select(DiffFile).where(DiffFile.path == "diff.json")).one()
    Path(registry.store.path(manifest.blob_sha256)).unlink()
    with pytest.raises(BlobMissingError, match=f"of {done.id}:diff.json is missing"):
        ops.export_diff(registry, ref=done.id, out=tmp_path / "exported")
    assert list(ops.verify(registry).missing) == [manifest.blob_sha256]


def test_gc_removes_only_old_orphans(registry: Registry, diff_dir: Path) -> None:
    ops.register_diff(registry, diff_dir=diff_dir, track="t")
    kept = {b.name for b in registry.store.blobs()}
    (Path(registry.store.root) / "tmp" / "left-by-a-crash").write_bytes(b"partial")
    young = registry.store.put(io.BytesIO(b"no row points here"))
    assert ops.gc(registry, grace=timedelta(hours=1)).blobs == 0
    old = time.time() - 7200
    os.utime(registry.store.path(young.name), (old, old))
    os.utime(Path(registry.store.root) / "tmp" / "left-by-a-crash", (old, old))
    report = ops.gc(registry, grace=timedelta(hours=1))
    assert (report.blobs, report.temporaries) == (1, 1)
    assert {b.name for b in registry.store.blobs()} == kept
    assert ops.verify(registry).ok


def test_kill_9_between_blob_and_row_leaves_no_dangling_row(registry: Registry, diff_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "blobs-written"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from graftwork.storage import registry as rows
        from graftwork.storage.blobs import BlobStore
        from graftwork.storage.db import make_engine
        from graftwork.operations import diffs as ops
        from graftwork.storage import Registry

        def stall(*args, **kwargs):
            Path({str(marker)!r}).touch()
            time.sleep(120)

        rows.add_diff = stall
        reg = Registry(engine=make_engine({registry.engine.url.render_as_string(hide_password=False)!r}),
                           store=BlobStore({registry.store.url!r}))
        ops.register_diff(reg, diff_dir=Path({str(diff_dir)!r}), track="t")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, "the registering process died before writing its blobs"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with session_scope(registry.engine) as session:
        assert rows.list_artifacts(session) == []
        assert session.scalar(select(func.count()).select_from(DiffFile)) == 0
    distinct = len(set(_tree(diff_dir).values()))  # identical files share one blob
    assert len(list(registry.store.blobs())) == distinct
    for blob in registry.store.blobs():
        registry.store.verify(blob.name, owner="no row")  # complete: its bytes hash to its name
    assert ops.gc(registry, grace=timedelta(0)).blobs == distinct
    assert list(registry.store.blobs()) == []
