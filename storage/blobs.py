"""A content-addressed blob store on any fsspec file system (a local folder by default).

A blob is named by the sha256 of its bytes: `ROOT/sha256/ab/abcdef…`. It is written under a
temporary name in `ROOT/tmp/`, fsynced (on a local disk), and renamed into place, so a reader never
sees part of a blob. Every read re-hashes what it reads and refuses a blob whose bytes do not
match its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import BlobCorruptError, BlobMissingError, BlobStoreError
from ..fs import disk_errors, fsync_dir, process_alive

CHUNK = 8 * 2**20
WRITER_BEAT_S = 30.0
"""How often an open writer refreshes its marker."""
WRITER_STALE_S = 600.0
"""A writer marker not refreshed for this long is a killed writer's: `oldest_writer` removes it."""


class Sink(Protocol):
    """Anything bytes can be written to."""

    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class BlobInfo:
    """A file in the store: its name (a blob's sha256), size in bytes and last-modified time (Unix seconds)."""

    name: str
    size: int
    mtime: float


class BlobStore:
    """Content-addressed blobs under an fsspec URL (`/path`, `file:///path`, `s3://bucket/prefix`, ...)."""

    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        try:
            self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)
            self.fs.makedirs(f"{self.root}/writers", exist_ok=True)
        except OSError as e:
            raise BlobStoreError(
                f"the blob store {url} is not a folder: {e.strerror or e}. Point GRAFT_BLOB_URL at a folder "
                "(or an fsspec URL of one).",
                path=url,
            ) from None

    def path(self, sha256: str) -> str:
        """Where blob `sha256` lives in the store's file system."""
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}"

    def put(self, src: BinaryIO) -> BlobInfo:
        """Store the rest of `src` as a blob and return it.

        Storing a blob that exists leaves its bytes as they are but marks it as new, so that a `gc`
        running meanwhile does not take it for an old orphan before its row is committed.

        Raises:
            DiskFullError, NoAccessError: the store's disk is full or may not be written (nothing is left).
        """
        tmp = f"{self.root}/tmp/{uuid.uuid4().hex}"
        with disk_errors(self.url, doing="storing a blob"):
            digest = hashlib.sha256()
            size = 0
            try:
                with self.fs.open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                    if self._local:
                        out.flush()
                        os.fsync(out.fileno())
                sha = digest.hexdigest()
                final = self.path(sha)
                if self._local and self.fs.exists(final):
                    os.utime(final)
                    self.fs.rm(tmp)
                else:
                    self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
                    self.fs.mv(tmp, final)
                    if self._local:
                        fsync_dir(Path(final).parent)
            except BaseException:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
                raise
        return BlobInfo(sha, size, time.time())

    def exists(self, sha256: str) -> bool:
        """Whether blob `sha256` is in the store."""
        return bool(self.fs.exists(self.path(sha256)))

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Announce a writer for the block: the blobs it stores are owned by rows only once it commits them, so
        `oldest_writer` (and `gc` with it) keeps every blob made since the oldest open writer began, whatever
        the grace. The marker (`writers/ID`, holding its start time) is refreshed while the block runs, and
        removed when it ends; a killed writer's goes stale after `WRITER_STALE_S`."""
        marker = f"{self.root}/writers/{uuid.uuid4().hex}"
        mine = {"start": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        self.fs.pipe_file(marker, json.dumps(mine).encode())
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(marker, stop), name="blob-writer", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            if self.fs.exists(marker):
                self.fs.rm(marker)

    def _beat(self, marker: str, stop: threading.Event) -> None:
        while not stop.wait(WRITER_BEAT_S):
            self.fs.touch(marker, truncate=False)

    def oldest_writer(self, *, now: float) -> float | None:
        """When the oldest open writer began (Unix seconds; None: no writer is open). The markers of killed
        writers are removed: one whose process is gone from this machine, or one not refreshed for
        `WRITER_STALE_S` (a writer on another machine)."""
        starts = []
        for info in list(self.fs.find(f"{self.root}/writers", detail=True).values()):
            try:
                writer = json.loads(self.fs.cat_file(info["name"]))
            except FileNotFoundError:  # it closed meanwhile
                continue
            except ValueError:  # caught half-written: it began just now
                writer = {"start": now}
            if now - _mtime(info) > WRITER_STALE_S or _gone(writer):
                self.fs.rm(info["name"])
                continue
            starts.append(float(writer["start"]))
        return min(starts, default=None)

    def mtime(self, sha256: str) -> float | None:
        """When blob `sha256` was last stored (None: it is gone)."""
        try:
            return _mtime(self.fs.info(self.path(sha256)))
        except FileNotFoundError:
            return None

    def read_into(self, sha256: str, dst: Sink, *, owner: str) -> int:
        """Copy blob `sha256` into `dst`, verifying its hash; return its size.

        `owner` names the row that points at the blob, for the error message. `dst` has received
        unverified bytes when this raises: write it to a temporary place.

        Raises:
            BlobMissingError: no such blob in the store.
            BlobCorruptError: the bytes do not hash to `sha256`.
            BlobStoreError: the blob's path is a folder.
        """
        with self.reading(sha256, owner=owner) as src:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
            return src.size

    @contextmanager
    def reading(self, sha256: str, *, owner: str) -> Iterator[HashingReader]:
        """Blob `sha256` open for reading, for a reader that streams it (a decoder); once the block has read it
        to its end, its bytes are checked against its name.

        Raises:
            BlobMissingError, BlobStoreError: as :meth:`read_into`, when the blob is opened or read.
            BlobCorruptError: at the end of a block that read the whole blob, when the bytes do not hash to
                `sha256`.
        """
        try:
            opened = self.fs.open(self.path(sha256), "rb")
        except IsADirectoryError:
            raise BlobStoreError(
                f"blob {sha256} of {owner} is a folder in the blob store {self.url}, not a file: "
                f"{self.path(sha256)}. Move it away and restore the blob from a backup.",
                path=self.path(sha256),
            ) from None
        except FileNotFoundError as e:
            raise BlobMissingError(
                f"blob {sha256} of {owner} is missing from the blob store {self.url}; restore it from a backup "
                "or re-register what it held.",
                blob=sha256,
                owner=owner,
            ) from e
        with opened as src:
            reader = HashingReader(src)
            yield reader
        if reader.ended and reader.sha256 != sha256:
            raise BlobCorruptError(
                f"blob {sha256} of {owner} is corrupt in the blob store {self.url}: its bytes hash to "
                f"{reader.sha256}. Restore it from a backup or re-register what it held.",
                blob=sha256,
                owner=owner,
            )

    def verify(self, sha256: str, *, owner: str) -> None:
        """Re-hash blob `sha256`.

        Raises:
            BlobMissingError, BlobCorruptError: as :meth:`read_into`.
        """
        self.read_into(sha256, _Discard(), owner=owner)

    def blobs(self) -> Iterator[BlobInfo]:
        """Every blob in the store."""
        for info in self.fs.find(f"{self.root}/sha256", detail=True).values():
            yield BlobInfo(info["name"].rsplit("/", 1)[-1], int(info["size"]), _mtime(info))

    def temporaries(self) -> Iterator[BlobInfo]:
        """Temporary files left by writers that were killed (or are still writing)."""
        for info in self.fs.find(f"{self.root}/tmp", detail=True).values():
            yield BlobInfo(info["name"].rsplit("/", 1)[-1], int(info["size"]), _mtime(info))

    def delete(self, sha256: str) -> None:
        """Remove blob `sha256` (no error if it is gone already)."""
        if self.fs.exists(self.path(sha256)):
            self.fs.rm(self.path(sha256))

    def delete_temporary(self, name: str) -> None:
        """Remove a leftover temporary file."""
        path = f"{self.root}/tmp/{name}"
        if self.fs.exists(path):
            self.fs.rm(path)


class HashingReader:
    """A binary file's `read`, hashing what it returns; `ended` once a read found the end of the file."""

    def __init__(self, src: BinaryIO) -> None:
        self._src, self._digest = src, hashlib.sha256()
        self.size, self.ended = 0, False

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self._digest.update(data)
        self.size += len(data)
        self.ended = self.ended or not data or (n >= 0 and len(data) < n) or n < 0
        return data

    @property
    def sha256(self) -> str:
        """The hash of the bytes read so far."""
        return self._digest.hexdigest()


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _gone(writer: dict[str, object]) -> bool:
    """Whether a writer marker's process ran on this machine and is no longer alive."""
    pid = writer.get("pid")
    return writer.get("host") == socket.gethostname() and isinstance(pid, int) and not process_alive(pid)


def _mtime(info: dict[str, object]) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("created") or 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)  # type: ignore[arg-type]
