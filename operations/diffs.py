"""The registry's operations that need both the codec (tasks) and storage: register, export,
verify and garbage-collect diffs.

Blobs are written before the rows that point to them are committed, so a crash in between leaves
only an orphan blob, which `gc` removes once it is older than the grace period; never a row that
points at a missing or partial blob.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ..errors import BlobCorruptError, BlobMissingError, BlobStoreError, CodecError
from ..fs import Say, atomic_output_dir, disk_errors, megabytes
from ..storage import Registry
from ..storage import registry as rows
from ..storage.blobs import CHUNK, BlobInfo
from ..storage.db import session_scope
from ..tasks.io.codec import CODEC, EncodeStats, decode_file, encode_file, raw_prefix
from ..tasks.io.difffolder import DiffFolder, open_diff_folder
from ..tasks.io.stfile import OnDemandReader, TensorInfo, parse_header


@dataclass(frozen=True)
class Registered:
    """The outcome of registering a diff: its id, whether it was new, and its sizes."""

    id: str
    new: bool
    raw_bytes: int
    stored_bytes: int
    seconds: float


def register_diff(
    registry: Registry,
    *,
    diff_dir: Path,
    track: str,
    parent: str | None = None,
    candidate_id: int | None = None,
    base_release_id: int | None = None,
    say: Say | None = None,
) -> Registered:
    """Compress and store every file of a diff folder, then record the diff on the registered `track`.

    `parent` is the diff it follows in the Δ chain; `candidate_id` and `base_release_id` the candidate
    it was taken from and the release that candidate was made for. Registering the same folder again
    (or from two processes at once) returns the same row.

    Raises:
        ModelFolderError: `diff_dir` is not a complete diff folder.
        NotFoundError: `track` is not registered (add it with `graft track add FILE` first), or `parent`
            names no diff.
    """
    start = time.perf_counter()
    with session_scope(registry.engine) as session:
        rows.get_track(session, name=track)  # before any blob is written
    folder = open_diff_folder(diff_dir)
    files = sorted(p for p in folder.path.rglob("*") if p.is_file())
    stored: list[rows.StoredFile] = []
    with registry.store.writing(), tempfile.TemporaryDirectory(prefix="graft-register-") as scratch:
        for path in files:
            relative = path.relative_to(folder.path).as_posix()
            stats, blob = _encode_and_put(registry, src=path, scratch=Path(scratch), name=relative)
            stored.append(rows.StoredFile(relative, stats.raw_sha256, stats.raw_bytes, blob.name, blob.size, CODEC))
            if say:
                say(f"  stored {relative}: {megabytes(stats.raw_bytes)} → {megabytes(blob.size)}")
        manifest = folder.manifest
        with session_scope(registry.engine) as session:
            new_diff = rows.NewDiff(
                key=hashlib.sha256("\n".join(f"{f.path} {f.raw_sha256}" for f in stored).encode()).hexdigest(),
                finetuned=manifest["finetuned"],
                base=manifest["base"],
                tensor_count=manifest["tensor_count"],
                norms={name: t["l2_norm"] for name, t in manifest["tensors"].items()},
                codec=CODEC,
                graftwork_version=manifest["graftwork_version"],
                files=tuple(stored),
                parent_id=None if parent is None else rows.get_diff(session, ref=parent).id,
                candidate_id=candidate_id,
                base_release_id=base_release_id,
            )
            row, new = rows.add_diff(session, track=rows.get_track(session, name=track), diff=new_diff)
            _store_again_what_is_gone(registry, stored=stored, folder=folder.path, scratch=Path(scratch))
            result = Registered(rows.public_id(row), new, row.raw_bytes, row.stored_bytes, time.perf_counter() - start)
    return result


def _encode_and_put(registry: Registry, *, src: Path, scratch: Path, name: str) -> tuple[EncodeStats, BlobInfo]:
    """Encode the diff file `src` (`name` in its folder) into `scratch`, then store it as a blob.

    Raises:
        DiskFullError, NoAccessError: scratch or the blob store is full or may not be written.
    """
    encoded = scratch / "blob"
    with disk_errors(scratch, doing=f"encoding {name}"), encoded.open("wb") as out:
        stats = encode_file(src=src, dst=out)
    with encoded.open("rb") as blob:
        return stats, registry.store.put(blob)


def _store_again_what_is_gone(
    registry: Registry, *, stored: list[rows.StoredFile], folder: Path, scratch: Path
) -> None:
    """Inside the transaction that records them: store again, encoded anew from the diff `folder`, any blob of
    `stored` that left the store since it was stored (a `gc` that had listed it as an orphan), so that the commit
    never points at a missing blob.

    Raises:
        BlobMissingError: the file encodes to other bytes now (the folder changed under the registration).
    """
    for file in stored:
        if registry.store.exists(file.blob_sha256):
            continue
        _, again = _encode_and_put(registry, src=folder / file.path, scratch=scratch, name=file.path)
        if again.name != file.blob_sha256:
            raise BlobMissingError(
                f"blob {file.blob_sha256} of {file.path} left the store while the diff was registered, and "
                f"{folder / file.path} no longer encodes to it; register the folder again.",
                blob=file.blob_sha256,
                owner=file.path,
            )


def export_diff(registry: Registry, *, ref: str, out: Path, overwrite: bool = False) -> Path:
    """Write a registered diff back out as a plain diff folder, usable by `graft apply`.

    Raises:
        NotFoundError: `ref` names no diff.
        BlobMissingError, BlobCorruptError: a blob is missing or its bytes are wrong; nothing is left at `out`.
        CodecError: a blob decodes to other bytes than were stored.
        OutputExistsError: `out` exists and `overwrite` is false.
    """
    with session_scope(registry.engine) as session:
        diff = rows.get_diff(session, ref=ref)
        files = [(f.path, f.blob_sha256) for f in diff.files]
        diff_id = rows.public_id(diff)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for path, sha in files:
            (tmp / path).parent.mkdir(parents=True, exist_ok=True)
            _decode_blob(registry, sha=sha, owner=f"{diff_id}:{path}", target=tmp / path)
        open_diff_folder(tmp)
    return Path(out).resolve()


@contextmanager
def streamed_diff(registry: Registry, *, ref: str, scratch: Path) -> Iterator[tuple[DiffFolder, OnDemandReader]]:
    """A registered diff, opened for `engine.apply` without exporting it: the block gets the diff folder and
    the reader to apply it with.

    Its small files (manifest, shard index, tokenizers) are decoded into the folder `scratch`, its shards'
    headers are read from the first frames of their blobs, and each shard is decoded into `scratch` when the
    engine first reads it, the one before it removed: scratch holds one shard at a time, not the whole Δ.
    `scratch` is removed when the block ends.

    Raises:
        NotFoundError: `ref` names no diff.
        BlobMissingError, BlobCorruptError, CodecError: as `export_diff` (from the block, for the shards).
        ModelFolderError: the stored files do not make a diff folder.
    """
    with session_scope(registry.engine) as session:
        diff = rows.get_diff(session, ref=ref)
        files = {f.path: f.blob_sha256 for f in diff.files}
        diff_id = rows.public_id(diff)
    shards = {path for path in files if path.endswith(".safetensors")}
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()  # the diff folder's tensors name resolved paths: the made files must match
    try:
        for path in files.keys() - shards:
            (scratch / path).parent.mkdir(parents=True, exist_ok=True)
            _decode_blob(registry, sha=files[path], owner=f"{diff_id}:{path}", target=scratch / path)

        def header(shard: Path) -> list[TensorInfo]:
            with registry.store.reading(files[shard.name], owner=f"{diff_id}:{shard.name}") as src:
                size, read = raw_prefix(src=src)
                return parse_header(read=read, path=shard, size=size)[0]

        def make(shard: Path) -> None:
            _decode_blob(registry, sha=files[shard.name], owner=f"{diff_id}:{shard.name}", target=shard)

        reader = OnDemandReader(made={scratch / path for path in shards}, make=make)
        try:
            yield open_diff_folder(scratch, headers=header), reader
        finally:
            reader.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _decode_blob(registry: Registry, *, sha: str, owner: str, target: Path) -> None:
    """Decode blob `sha` of `owner` into the file `target`, straight from the store.

    Raises:
        BlobMissingError, BlobStoreError: the blob cannot be read.
        BlobCorruptError: its bytes are not the ones it is named by (also when they do not decode).
        CodecError: its bytes are right but do not decode to what was stored.
    """
    failure = None
    with registry.store.reading(sha, owner=owner) as src, target.open("wb") as dst:
        try:
            decode_file(src=src, dst=dst)
        except CodecError as e:
            failure = e
            while src.read(CHUNK):  # hash the rest: a damaged blob is a BlobCorruptError, raised as the block ends
                pass
    if failure is not None:
        raise CodecError(f"blob {sha} of {owner}: {failure}", what=owner) from failure


@dataclass
class VerifyReport:
    """What `verify` found: how many blobs were checked, and the missing and corrupt ones with their rows."""

    checked: int = 0
    missing: dict[str, list[str]] = field(default_factory=dict)
    corrupt: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def verify(registry: Registry) -> VerifyReport:
    """Re-hash every blob a row points to."""
    with session_scope(registry.engine) as session:
        owners = rows.blob_owners(session)
    report = VerifyReport()
    for sha, who in sorted(owners.items()):
        report.checked += 1
        try:
            registry.store.verify(sha, owner=", ".join(who))
        except BlobMissingError:
            report.missing[sha] = who
        except (BlobCorruptError, BlobStoreError):  # a folder where the blob should be is no blob either
            report.corrupt[sha] = who
    return report


@dataclass(frozen=True)
class GcReport:
    """What `gc` removed: orphan blobs and leftover temporaries, and the bytes they held."""

    blobs: int
    temporaries: int
    bytes: int


def gc(registry: Registry, *, grace: timedelta) -> GcReport:
    """Remove blobs no row points to, and writers' leftover temporaries, older than `grace` and than the oldest
    writer still open (`BlobStore.writing`): whatever the grace, a blob stored by a writer that has not yet
    committed its rows is kept."""
    now = time.time()
    cutoff = now - grace.total_seconds()
    oldest = registry.store.oldest_writer(now=now)
    if oldest is not None:
        cutoff = min(cutoff, oldest)
    with session_scope(registry.engine) as session:
        owned = set(rows.blob_owners(session))
    blobs = temporaries = freed = 0
    for blob in list(registry.store.blobs()):
        if blob.name in owned or blob.mtime >= cutoff:
            continue
        stored = registry.store.mtime(blob.name)  # a writer may have stored it again since it was listed
        if stored is not None and stored < cutoff:
            registry.store.delete(blob.name)
            blobs += 1
            freed += blob.size
    for temp in list(registry.store.temporaries()):
        if temp.mtime < cutoff:
            registry.store.delete_temporary(temp.name)
            temporaries += 1
            freed += temp.size
    return GcReport(blobs=blobs, temporaries=temporaries, bytes=freed)
