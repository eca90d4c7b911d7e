"""Carrying a registered Δ over streams it from the blob store: the same bits as exporting it first, with one
shard on scratch disk at a time, and a damaged blob refused with nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftwork.errors import BlobCorruptError
from graftwork.operations import diffs as ops
from graftwork.storage import Registry
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.tasks import engine
from tests.conftest import Family, bits_equal, load_state

SHARD_BYTES = 4096
"""Small shards, so that the family's Δ spans many of them."""


@pytest.fixture
def sharded(registry: Registry, bf16_family: Family, tmp_path: Path) -> tuple[str, int]:
    """A registered Δ of the bf16 family in many shards: its id and shard count."""
    folder = tmp_path / "delta"
    engine.diff(finetuned=bf16_family.finetuned, base=bf16_family.base, out=folder, max_shard_bytes=SHARD_BYTES)
    shards = len(list(folder.glob("*.safetensors")))
    assert shards >= 4
    return ops.register_diff(registry, diff_dir=folder, track="t").id, shards


def test_a_streamed_delta_applies_as_the_exported_one_with_one_shard_on_disk(
    registry: Registry, sharded: tuple[str, int], bf16_family: Family, tmp_path: Path
) -> None:
    ref, shards = sharded
    exported = ops.export_diff(registry, ref=ref, out=tmp_path / "exported")
    engine.apply(diff=exported, target=bf16_family.target, out=tmp_path / "via-export", alpha=0.5)
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    scratch, on_disk = tmp_path / "linked" / "scratch", []  # a data dir reached through a symlink

    def look(done: int, total: int) -> None:
        on_disk.append(len(list(scratch.glob("*.safetensors"))))

    with ops.streamed_diff(registry, ref=ref, scratch=scratch) as (diff, reader):
        engine.apply(diff=diff, reader=reader, target=bf16_family.target, out=tmp_path / "streamed", alpha=0.5,
                     progress=look)  # fmt: skip
    want, got = load_state(tmp_path / "via-export"), load_state(tmp_path / "streamed")
    assert got.keys() == want.keys() and all(bits_equal(got[n], want[n]) for n in want)
    assert max(on_disk) == 1 and len(on_disk) >= shards  # one decoded shard at a time, never the whole Δ
    assert not scratch.exists()


def test_a_damaged_shard_blob_is_refused_and_nothing_is_left(
    registry: Registry, sharded: tuple[str, int], bf16_family: Family, tmp_path: Path
) -> None:
    ref, _ = sharded
    with session_scope(registry.engine) as session:
        last = max((f for f in rows.get_diff(session, ref=ref).files if f.path.endswith(".safetensors")),
                   key=lambda f: f.path)  # fmt: skip
        sha, path = last.blob_sha256, last.path
    blob = Path(registry.store.path(sha))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    scratch = tmp_path / "scratch"
    with (
        pytest.raises(BlobCorruptError, match=rf"blob {sha} of {ref}:{path} is corrupt"),
        ops.streamed_diff(registry, ref=ref, scratch=scratch) as (diff, reader),
    ):
        engine.apply(diff=diff, reader=reader, target=bf16_family.target, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not scratch.exists()
