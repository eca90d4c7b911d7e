"""Lossless compression of diff files: byte-plane grouping + zstd, streamed in independent frames.

A diff of two bf16 models is stored as float32 (see `graftwork.tasks.engine`), so the low mantissa bytes of
every value are almost always zero, the sign/exponent byte takes a few values, and only one byte is
close to random. Compressing the bytes of each tensor grouped by position in the value (all byte 0s,
then all byte 1s, ...) lets zstd's Huffman coder see each of those distributions on its own. The
planes are compressed with a tiny match table and the longest minimum match: floats have almost no
long repeats, and spurious short matches cost more than Huffman-coded literals (measured in
`benchmarks/bench_codec.py`). Safetensors headers, 1-byte tensors and any file that is not
safetensors are plain zstd (how a file is cut into segments is :mod:`graftwork.tasks.io.planes`).

Stream format, version 1 (all integers little-endian):

```
header   magic b"GWDZ" | version u8 = 1 | reserved u8[3] = 0 | raw_size u64 | frame_size u32
         | segment_count u32 | segment_count × (length u64 | item_size u8)
frames   frame_count × (raw_len u32 | stored_len u32 | one zstd frame of stored_len bytes)
trailer  magic b"GWDE" | frame_count u64 | raw sha256 (32 bytes)
```

Segments tile the raw file in order; a segment with item size k > 1 holds values of k bytes. Each
segment is cut into frames of `frame_size` raw bytes (the last one shorter); a frame of item size k
holds its k byte planes one after the other, so frames are independent and are (de)compressed in a
thread pool, a few at a time, whatever the file's size. The sha256 of the raw bytes is computed
while streaming and so lives in the trailer: a decoder writes as it goes and checks it at the end,
so its caller must write to a temporary path and keep the result only when decoding returns.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

import zstandard

from ...errors import CodecError
from .planes import PLANE_ITEM_SIZES, Segment, file_segments, from_planes, to_planes

T = TypeVar("T")

CODEC = "gw-bplane-zstd-v1"
FORMAT_VERSION = 1
DEFAULT_LEVEL = 1
DEFAULT_FRAME_SIZE = 4 * 2**20
MAGIC = b"GWDZ"
END_MAGIC = b"GWDE"
_HEADER = struct.Struct("<4sB3xQII")
_SEGMENT = struct.Struct("<QB")
_FRAME = struct.Struct("<II")
_TRAILER = struct.Struct("<4sQ32s")
_MAX_FRAME_SIZE = 2**30
_PLANE_HASH_LOG = 6
_PLANE_MIN_MATCH = 7


@dataclass(frozen=True)
class EncodeStats:
    """What :func:`encode_file` read and wrote."""

    raw_bytes: int
    stored_bytes: int
    raw_sha256: str
    seconds: float


@dataclass(frozen=True)
class DecodeStats:
    """What :func:`decode_file` read and wrote."""

    raw_bytes: int
    stored_bytes: int
    raw_sha256: str
    seconds: float


class Readable(Protocol):
    """What a decoder reads a stream from: a binary file, or anything with its `read`."""

    def read(self, n: int, /) -> bytes: ...


def encode_file(
    *,
    src: Path,
    dst: BinaryIO,
    level: int = DEFAULT_LEVEL,
    threads: int = 0,
    frame_size: int = DEFAULT_FRAME_SIZE,
) -> EncodeStats:
    """Compress the file `src` into `dst` (written from its current position) and return sizes and sha256.

    Memory stays at a few frames per thread, whatever the size of `src`. `threads=0` uses every core.

    Raises:
        ValueError: `frame_size` is not a positive multiple of 8 of at most 1 GiB, or `level` is not a
            zstd level from 1 to 22.
        OSError: `src` cannot be read or `dst` cannot be written.
    """
    if frame_size <= 0 or frame_size % 8 or frame_size > _MAX_FRAME_SIZE:
        raise ValueError(f"frame_size must be a positive multiple of 8 of at most 1 GiB, not {frame_size}.")
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"level must be a zstd level from 1 to {zstandard.MAX_COMPRESSION_LEVEL}, not {level}.")
    start = time.perf_counter()
    src = Path(src)
    segments = file_segments(src)
    raw_size = sum(s.length for s in segments)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, raw_size, frame_size, len(segments))
    head += b"".join(_SEGMENT.pack(s.length, s.item_size) for s in segments)
    dst.write(head)
    stored = len(head)
    sha = hashlib.sha256()
    compressors = _PerThread(lambda: _compressors(level))
    jobs = _frame_jobs(segments, frame_size)
    with src.open("rb") as f:

        def compress(item_size: int, raw: bytearray) -> bytes:
            plain, planes = compressors.get()
            if item_size == 1:
                return plain.compress(raw)
            return planes.compress(to_planes(raw, item_size))

        def submit(pool: ThreadPoolExecutor, index: int, item_size: int, length: int) -> Future[tuple[int, bytes]]:
            raw = bytearray(length)
            if f.readinto(raw) != length:
                raise OSError(f"{src} changed size while it was being compressed.")
            sha.update(raw)
            return pool.submit(lambda: (length, compress(item_size, raw)))

        for length, data in _ordered(jobs, submit, threads=threads):
            dst.write(_FRAME.pack(length, len(data)))
            dst.write(data)
            stored += _FRAME.size + len(data)
    trailer = _TRAILER.pack(END_MAGIC, len(jobs), sha.digest())
    dst.write(trailer)
    stored += len(trailer)
    return EncodeStats(
        raw_bytes=raw_size, stored_bytes=stored, raw_sha256=sha.hexdigest(), seconds=time.perf_counter() - start
    )


def decode_file(*, src: Readable, dst: BinaryIO, threads: int = 0) -> DecodeStats:
    """Decode a stream written by :func:`encode_file` from `src` into `dst`, and verify it.

    The bytes are written as they are decoded; the raw size and sha256 recorded in the stream are
    checked at the end, so write `dst` to a temporary path and keep it only when this returns.

    Raises:
        CodecError: the stream is not a Graftwork codec stream, is of an unknown format version, is
            truncated or corrupt, or decodes to bytes whose size or sha256 differ from the recorded ones.
        OSError: `src` cannot be read or `dst` cannot be written.
    """
    start = time.perf_counter()
    reader = _Reader(src)
    raw_size, frame_size, segments = _read_header(reader)
    decompressors = _PerThread(zstandard.ZstdDecompressor)
    jobs = _frame_jobs(segments, frame_size)
    total = len(jobs)
    sha = hashlib.sha256()
    written = 0

    def decompress(index: int, item_size: int, length: int, data: bytes) -> bytes | memoryview:
        return _decompress(decompressors.get(), data, index=index, total=total, item_size=item_size, length=length)

    def submit(pool: ThreadPoolExecutor, index: int, item_size: int, length: int) -> Future[bytes | memoryview]:
        data = _frame_data(reader, index=index, total=total, length=length)
        return pool.submit(decompress, index, item_size, length, data)

    for raw in _ordered(jobs, submit, threads=threads):
        dst.write(raw)
        sha.update(raw)
        written += len(raw)
    magic, frame_count, digest = _TRAILER.unpack(reader.read(_TRAILER.size, "the trailer"))
    if magic != END_MAGIC or frame_count != total:
        raise CodecError(
            f"the trailer is damaged (magic {magic!r}, {frame_count} frames recorded, {total} read); {_RESTORE}",
            what="the trailer",
        )
    if src.read(1):
        raise CodecError(
            f"the stream goes on after its trailer, so it is not one {CODEC} stream; {_RESTORE}", what="the trailer"
        )
    if written != raw_size or sha.digest() != digest:
        raise CodecError(
            f"raw sha256 mismatch: decoded {written} bytes with sha256 {sha.hexdigest()}, the stream "
            f"records {raw_size} bytes with sha256 {digest.hex()}; {_RESTORE}",
            what="the raw bytes",
        )
    return DecodeStats(
        raw_bytes=written, stored_bytes=reader.count, raw_sha256=digest.hex(), seconds=time.perf_counter() - start
    )


def raw_prefix(*, src: Readable) -> tuple[int, Callable[[int], bytes]]:
    """The raw size of the stream in `src`, and a `read(n)` of its first raw bytes, decoded a frame at a time
    as far as the reads go (a file's header, without decoding the file). Nothing is verified beyond the frames
    read: :func:`decode_file` checks the whole stream.

    Raises:
        CodecError: the stream is not a Graftwork codec stream, or is damaged where it is read (also from `read`).
    """
    reader = _Reader(src)
    raw_size, frame_size, segments = _read_header(reader)
    jobs = _frame_jobs(segments, frame_size)
    decompressor = zstandard.ZstdDecompressor()
    decoded = bytearray()
    frames = iter(enumerate(jobs, start=1))

    def read(n: int) -> bytes:
        while len(decoded) < n and (frame := next(frames, None)) is not None:
            index, (item_size, length) = frame
            data = _frame_data(reader, index=index, total=len(jobs), length=length)
            decoded.extend(
                _decompress(decompressor, data, index=index, total=len(jobs), item_size=item_size, length=length)
            )
        out = bytes(decoded[:n])
        del decoded[:n]
        return out

    return raw_size, read


def _frame_data(reader: _Reader, *, index: int, total: int, length: int) -> bytes:
    """The stored bytes of frame `index`, once its header agrees with the stream's layout."""
    raw_len, stored_len = _FRAME.unpack(reader.read(_FRAME.size, f"the header of frame {index} of {total}"))
    if raw_len != length:
        raise CodecError(
            f"frame {index} of {total} says it holds {raw_len} bytes but the stream's layout says {length}; {_RESTORE}",
            what=f"frame {index}",
        )
    return reader.read(stored_len, f"frame {index} of {total}")


def _decompress(
    decompressor: zstandard.ZstdDecompressor, data: bytes, *, index: int, total: int, item_size: int, length: int
) -> bytes | memoryview:
    """The raw bytes of one frame (its byte planes put back together)."""
    try:
        raw = decompressor.decompress(data, max_output_size=length)
    except zstandard.ZstdError as exc:
        raise CodecError(f"frame {index} of {total} is corrupt ({exc}); {_RESTORE}", what=f"frame {index}") from None
    if len(raw) != length:
        raise CodecError(
            f"frame {index} of {total} decodes to {len(raw)} bytes, not {length}; {_RESTORE}", what=f"frame {index}"
        )
    return raw if item_size == 1 else from_planes(raw, item_size)


_RESTORE = "the stored blob is damaged; restore it from another copy or register the diff again."


class _Reader:
    """Reads exact byte counts from a stream, counting them, and names what a short read cut off."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self.count = 0

    def read(self, n: int, what: str) -> bytes:
        data = self._src.read(n)
        self.count += len(data)
        if len(data) != n:
            raise CodecError(f"the stream is truncated: it ends inside {what}; {_RESTORE}", what=what)
        return data


def _read_header(reader: _Reader) -> tuple[int, int, list[Segment]]:
    magic = reader.read(4, "the magic bytes")
    if magic != MAGIC:
        raise CodecError(
            f"not a {CODEC} stream: it starts with {magic!r}, not {MAGIC!r}. Decode it with the codec "
            "recorded for it in the registry.",
            what="the magic bytes",
        )
    version = reader.read(1, "the header")[0]
    if version != FORMAT_VERSION:
        raise CodecError(
            f"the stream has format version {version}, and this Graftwork reads only version "
            f"{FORMAT_VERSION}; upgrade Graftwork to read it.",
            what="the header",
        )
    _, _, raw_size, frame_size, count = _HEADER.unpack(
        magic + bytes([version]) + reader.read(_HEADER.size - 5, "the header")
    )
    if frame_size <= 0 or frame_size % 8 or frame_size > _MAX_FRAME_SIZE:
        raise CodecError(f"the header is damaged (frame size {frame_size}); {_RESTORE}", what="the header")
    table = reader.read(count * _SEGMENT.size, "the segment table")
    segments = [Segment(*_SEGMENT.unpack_from(table, i * _SEGMENT.size)) for i in range(count)]
    if sum(s.length for s in segments) != raw_size or any(
        s.item_size not in (1, *PLANE_ITEM_SIZES) or s.length % s.item_size for s in segments
    ):
        raise CodecError(
            f"the header is damaged (its segments do not add up to {raw_size} bytes); {_RESTORE}",
            what="the segment table",
        )
    return raw_size, frame_size, segments


def _frame_jobs(segments: list[Segment], frame_size: int) -> list[tuple[int, int]]:
    """(item size, raw length) of each frame, in stream order."""
    return [
        (s.item_size, min(frame_size, s.length - offset)) for s in segments for offset in range(0, s.length, frame_size)
    ]


def _ordered(
    jobs: list[tuple[int, int]],
    submit: Callable[[ThreadPoolExecutor, int, int, int], Future[T]],
    *,
    threads: int,
) -> Iterator[T]:
    """Run `submit(pool, frame number, item size, length)` for each job with a few in flight; yield results in order."""
    workers = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(workers, thread_name_prefix="graft-codec") as pool:
        pending: deque[Future[T]] = deque()
        try:
            for index, (item_size, length) in enumerate(jobs, start=1):
                pending.append(submit(pool, index, item_size, length))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _compressors(level: int) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
    """A plain compressor and one tuned for byte planes (Huffman-coded literals, few matches)."""
    params = zstandard.ZstdCompressionParameters.from_level(level, hash_log=_PLANE_HASH_LOG, min_match=_PLANE_MIN_MATCH)
    return zstandard.ZstdCompressor(level=level), zstandard.ZstdCompressor(compression_params=params)


class _PerThread(Generic[T]):
    """One object per thread, made on first use (zstd contexts must not be shared between threads)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        value: T | None = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._factory()
        return value
