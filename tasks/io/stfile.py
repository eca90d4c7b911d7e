"""Streaming access to safetensors files with bounded memory.

The `safetensors` library maps whole files, so every page a run touches stays mapped (and counted in
its resident memory) until the file is closed, and its writer needs every tensor of a file in memory
at once. The engine streams models far larger than its memory budget, so it parses the (tiny, JSON)
header itself, maps one row range at a time (no copy: arithmetic reads the page cache directly, and
the range is unmapped as soon as its tensor is freed), and writes tensors one chunk at a time behind
a reserved header that is filled in when the file is complete (the format allows trailing spaces in
the header). Files written here are read back by `safetensors` itself in the tests.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFolderError, UnsupportedDtypeError

# The numpy type a floating-point tensor's elements are held in: its bits for the 16-bit types, which numpy cannot
# do arithmetic on (bf16) or which the engine's kernels decode themselves (fp16), the values for the others.
ARRAY_DTYPES: dict[str, np.dtype[Any]] = {
    "BF16": np.dtype(np.uint16),
    "F16": np.dtype(np.int16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
}
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20
_SYNC_EVERY = 64 * 2**20
_HEADER_ALIGN = 8


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of `shape` (1 for a scalar)."""
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    start: int
    nbytes: int

    @property
    def rows(self) -> int:
        """Length of the first dimension (1 for a scalar)."""
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        """Elements in one row (all dimensions but the first)."""
        return numel(self.shape[1:])

    @property
    def array_dtype(self) -> np.dtype[Any]:
        """The numpy type this floating-point tensor's elements are held in (`ARRAY_DTYPES`).

        Raises:
            UnsupportedDtypeError: the tensor is not F16, BF16, F32 or F64.
        """
        try:
            return ARRAY_DTYPES[self.dtype]
        except KeyError:
            raise UnsupportedDtypeError(
                f"tensor {self.name!r} in {self.path} has dtype {self.dtype}; the engine only does "
                f"arithmetic on {', '.join(ARRAY_DTYPES)} tensors. Convert the model to one of them "
                "first.",
                tensor=self.name,
            ) from None


def read_header(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse a safetensors file's header.

    Returns:
        The tensors in file order and the `__metadata__` mapping.

    Raises:
        ModelFolderError: the file is truncated or its header is not valid safetensors.
    """
    with path.open("rb") as f:
        return parse_header(read=f.read, path=path, size=path.stat().st_size)


def parse_header(*, read: Callable[[int], bytes], path: Path, size: int) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse the header of the safetensors file of `size` bytes that will be at `path`, its first bytes given
    by `read(n)` (a file's `read`, or a decoder's, before the file is written).

    Raises:
        ModelFolderError: the header is not valid safetensors for a file of `size` bytes.
    """
    raw_len = read(8)
    if len(raw_len) < 8:
        raise ModelFolderError(f"{path} is not a safetensors file: it is {size} bytes long.", path=path)
    (hlen,) = struct.unpack("<Q", raw_len)
    if hlen > min(_MAX_HEADER, size - 8):
        raise ModelFolderError(f"{path} has a corrupt safetensors header length ({hlen}).", path=path)
    try:
        header = json.loads(read(hlen))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} has a safetensors header that is not JSON: {exc}", path=path) from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path} has a safetensors header that is not a JSON object.", path=path)
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + hlen
    infos = []
    for name, entry in header.items():
        infos.append(_tensor_info(path, name, entry, base, size))
    infos.sort(key=lambda i: i.start)
    return infos, metadata


def _tensor_info(path: Path, name: str, entry: Any, base: int, size: int) -> TensorInfo:
    try:
        dtype = entry["dtype"]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelFolderError(f"{path}: header entry of tensor {name!r} is malformed: {entry!r}", path=path) from None
    if any(d < 0 for d in shape):
        raise ModelFolderError(
            f"{path}: tensor {name!r} declares the shape {list(shape)}, with a negative dimension; the file is "
            "corrupt.",
            path=path,
        )
    if dtype not in _ITEMSIZE:
        raise UnsupportedDtypeError(f"tensor {name!r} in {path} has unknown dtype {dtype!r}.", tensor=name)
    if end - begin != numel(shape) * _ITEMSIZE[dtype] or begin < 0 or base + end > size:
        raise ModelFolderError(
            f"{path}: tensor {name!r} ({dtype} {list(shape)}) has data offsets [{begin}, {end}] that "
            f"do not fit its shape or the file ({size} bytes); the file is truncated or corrupt.",
            path=path,
        )
    return TensorInfo(name=name, dtype=dtype, shape=shape, path=path, start=base + begin, nbytes=end - begin)


class TensorReader:
    """Reads row ranges of tensors, keeping one descriptor per file: mapped (:meth:`read_rows`) or copied into a
    buffer the caller reuses (:meth:`read_into`)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Rows `[start, stop)` of a floating-point tensor, as an array of its `array_dtype`.

        The array is a copy-on-write map of the file's pages, not a copy: writing to it never
        changes the file, and the pages are unmapped when the array is freed. The kernel is told to
        read the range ahead, so a file that is not in the page cache streams from disk.

        Raises:
            UnsupportedDtypeError: the tensor is not a float tensor.
            ModelFolderError: the file ended early.
        """
        dtype, shape, offset, nbytes = _extent(info, start, stop)
        if not nbytes:
            return np.empty(shape, dtype=dtype)
        skip = offset % mmap.ALLOCATIONGRANULARITY
        fd = self._fd(info.path)
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_WILLNEED)
        try:
            pages = mmap.mmap(fd, skip + nbytes, access=mmap.ACCESS_COPY, offset=offset - skip)
        except ValueError:
            raise _ended(info) from None
        return np.frombuffer(pages, dtype=dtype, count=nbytes // dtype.itemsize, offset=skip).reshape(shape)

    def read_into(self, info: TensorInfo, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        """Rows `[start, stop)` of a floating-point tensor copied into the front of `buffer` (uint8, long enough:
        see :func:`range_bytes`), as an array of its `array_dtype` over those bytes.

        A copy from the page cache costs less than mapping the pages and unmapping them again, and a reader
        thread pays it instead of the thread that computes; the buffer is the caller's to reuse.

        Raises:
            UnsupportedDtypeError: the tensor is not a float tensor.
            ModelFolderError: the file ended early.
        """
        dtype, shape, offset, nbytes = _extent(info, start, stop)
        view = buffer[:nbytes]
        done, fd = 0, self._fd(info.path)
        while done < nbytes:
            got = os.preadv(fd, [view[done:].data], offset + done)
            if not got:
                raise _ended(info)
            done += got
        return view.view(dtype).reshape(shape)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Ask the kernel to read rows `[start, stop)` of a tensor from disk now, so that the reads of several
        files are in flight at once (nothing to do for pages already cached).

        Raises:
            UnsupportedDtypeError: the tensor is not a float tensor.
        """
        _, _, offset, nbytes = _extent(info, start, stop)
        if nbytes:
            os.posix_fadvise(self._fd(info.path), offset, nbytes, os.POSIX_FADV_WILLNEED)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Close every file this reader opened (arrays it returned stay valid)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def range_bytes(info: TensorInfo, start: int, stop: int) -> int:
    """Bytes of rows `[start, stop)` of a tensor."""
    return (stop - start) * info.row_numel * _ITEMSIZE[info.dtype]


def _extent(info: TensorInfo, start: int, stop: int) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """dtype, shape, file offset and length in bytes of rows `[start, stop)`."""
    dtype = info.array_dtype
    shape = (stop - start, *info.shape[1:]) if info.shape else ()
    return dtype, shape, info.start + range_bytes(info, 0, start), range_bytes(info, start, stop)


def _ended(info: TensorInfo) -> ModelFolderError:
    return ModelFolderError(f"{info.path} ended while reading tensor {info.name!r}.", path=info.path)


class OnDemandReader(TensorReader):
    """A tensor reader over some files that are made when they are first read (a registered diff's shards,
    decoded from the blob store), one at a time: making one removes the one made before, so a reader that goes
    through them in order has only one on disk. Other files are read as they are. Arrays already returned stay
    valid (their pages stay mapped, or they were copied)."""

    def __init__(self, *, made: Collection[Path], make: Callable[[Path], None]) -> None:
        super().__init__()
        self._made, self._make = frozenset(made), make
        self._current: Path | None = None

    def _fd(self, path: Path) -> int:
        """The file's descriptor, making the file first when it is one of the made files and not the one at hand
        (what `make` raises goes to the reader's caller)."""
        if path in self._made and path != self._current:
            self._drop()
            self._make(path)
            self._current = path
        return super()._fd(path)

    def close(self) -> None:
        """Close the files and remove the one made last."""
        super().close()
        self._drop()

    def _drop(self) -> None:
        if self._current is not None:
            fd = self._fds.pop(self._current, None)
            if fd is not None:
                os.close(fd)
            self._current.unlink(missing_ok=True)
            self._current = None


class ShardWriter:
    """Writes one safetensors file tensor by tensor, in chunks, behind a reserved header.

    The header is written by :meth:`close`, padded with spaces to the reserved length, so a
    tensor's dtype may still change (:meth:`restart_tensor`) after its first bytes were written.
    With `durable`, :meth:`close` fsyncs the file, and every 64 MiB a background thread flushes
    what was written so far (`fdatasync`), so that final fsync waits only for the tail.
    """

    def __init__(
        self,
        path: Path,
        *,
        planned: list[tuple[str, tuple[int, ...]]],
        metadata: dict[str, str],
        durable: bool = False,
    ):
        self.path = path
        self._metadata = metadata
        worst = {name: {"dtype": "BF16", "shape": list(shape), "data_offsets": [0, 0]} for name, shape in planned}
        offset = 0
        for name, shape in planned:
            worst[name]["data_offsets"] = [offset, offset + 8 * numel(shape)]
            offset += 8 * numel(shape)
        self._reserved = _aligned(len(_header_bytes(worst, metadata)))
        self._entries: dict[str, dict[str, Any]] = {}
        self._current: str | None = None
        self._file = path.open("wb")
        self._file.write(b"\0" * (8 + self._reserved))
        self._offset = 0
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="graft-sync") if durable else None
        self._sync: Future[None] | None = None
        self._unsynced = 0

    def begin_tensor(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        """Start writing tensor `name`; its bytes follow through :meth:`write`."""
        self._current = name
        self._entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [self._offset, self._offset]}

    def write(self, data: np.ndarray) -> None:
        """Append the bytes of an array (in C order) to the current tensor."""
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        self._file.write(raw)
        self._offset += len(raw)
        self._unsynced += len(raw)
        if self._syncer and self._unsynced >= _SYNC_EVERY and (self._sync is None or self._sync.done()):
            self._file.flush()
            self._sync = self._syncer.submit(os.fdatasync, self._file.fileno())
            self._unsynced = 0
        assert self._current is not None
        self._entries[self._current]["data_offsets"][1] = self._offset

    def restart_tensor(self, dtype: str) -> None:
        """Drop the bytes written for the current tensor and restart it with another dtype."""
        assert self._current is not None
        entry = self._entries[self._current]
        self._offset = entry["data_offsets"][0]
        entry["data_offsets"][1] = self._offset
        entry["dtype"] = dtype
        self._file.seek(8 + self._reserved + self._offset)
        self._file.truncate()

    def close(self) -> int:
        """Write the header and flush the file (fsync it too when durable); return its size in bytes."""
        header = _header_bytes(self._entries, self._metadata)
        header += b" " * (self._reserved - len(header))
        self._file.seek(0)
        self._file.write(struct.pack("<Q", len(header)))
        self._file.write(header)
        self._file.flush()
        if self._syncer is not None:
            if self._sync is not None:
                self._sync.result()
            self._syncer.shutdown()
            os.fsync(self._file.fileno())
        self._file.close()
        return 8 + self._reserved + self._offset

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data written so far (header excluded)."""
        return self._offset


def _header_bytes(entries: dict[str, Any], metadata: dict[str, str]) -> bytes:
    return json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()


def _aligned(n: int) -> int:
    return (n + _HEADER_ALIGN - 1) // _HEADER_ALIGN * _HEADER_ALIGN
