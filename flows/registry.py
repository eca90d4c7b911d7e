"""The registry's operations that need both the codec (tasks) and storage: register, export,
verify and garbage-collect diffs.

Blobs are written before the rows that point to them are committed, so a crash in between leaves
only an orphan blob, which `gc` removes once it is older than the grace period; never a row that
points at a missing or partial blob.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ..errors import BlobCorruptError, BlobMissingError, BlobStoreError, CodecError
from ..fs import Say, atomic_output_dir, megabytes
from ..storage import Registry
from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.io.codec import CODEC, decode_file, encode_file
from ..tasks.io.difffolder import open_diff_folder


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
    with tempfile.TemporaryDirectory(prefix="graft-register-") as scratch:
        for path in files:
            relative = path.relative_to(folder.path).as_posix()
            encoded = Path(scratch) / "blob"
            with encoded.open("wb") as out:
                stats = encode_file(src=path, dst=out)
            with encoded.open("rb") as src:
                blob = registry.store.put(src)
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
        result = Registered(rows.public_id(row), new, row.raw_bytes, row.stored_bytes, time.perf_counter() - start)
    return result


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
    with atomic_output_dir(out, overwrite=overwrite) as tmp, tempfile.TemporaryDirectory() as scratch:
        encoded = Path(scratch) / "blob"
        for path, sha in files:
            with encoded.open("wb") as dst:
                registry.store.read_into(sha, dst, owner=f"{diff_id}:{path}")
            target = tmp / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with encoded.open("rb") as src, target.open("wb") as dst:
                try:
                    decode_file(src=src, dst=dst)
                except CodecError as e:
                    raise CodecError(f"blob {sha} of {diff_id}:{path}: {e}", what=f"{diff_id}:{path}") from e
        open_diff_folder(tmp)
    return Path(out).resolve()


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
    """Remove blobs no row points to, and writers' leftover temporaries, older than `grace`."""
    cutoff = time.time() - grace.total_seconds()
    with session_scope(registry.engine) as session:
        owned = set(rows.blob_owners(session))
    blobs = temporaries = freed = 0
    for blob in list(registry.store.blobs()):
        if blob.name not in owned and blob.mtime <= cutoff:
            registry.store.delete(blob.name)
            blobs += 1
            freed += blob.size
    for temp in list(registry.store.temporaries()):
        if temp.mtime <= cutoff:
            registry.store.delete_temporary(temp.name)
            temporaries += 1
            freed += temp.size
    return GcReport(blobs=blobs, temporaries=temporaries, bytes=freed)
