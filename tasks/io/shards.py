"""Sharded safetensors output: a shard plan, one writer per shard, and the index file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...fs import write_json
from .stfile import ShardWriter

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to be written: its name, shape and expected size in bytes."""

    name: str
    shape: tuple[int, ...]
    nbytes: int


class ShardedWriter:
    """Writes tensors, in the planned order, into `PREFIX-0000i-of-0000n.safetensors` shards.

    A shard is closed (and, when `durable`, fsynced) as soon as the first tensor of the next one
    begins; the index `PREFIX.safetensors.index.json` is written by :meth:`close`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        prefix: str,
        tensors: list[PlannedTensor],
        max_shard_bytes: int,
        metadata: dict[str, str],
        durable: bool = False,
    ):
        self._durable = durable
        self._folder = folder
        self._prefix = prefix
        self._metadata = metadata
        shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for t in tensors:
            if shards[-1] and size + t.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        self._shards = shards
        self._names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        self._shard_of = {t.name: i for i, shard in enumerate(shards) for t in shard}
        self._index = -1
        self._writer: ShardWriter | None = None
        self._data_bytes = 0
        self.bytes_written = 0

    @property
    def shard_count(self) -> int:
        """How many shard files the plan has."""
        return len(self._shards)

    def begin_tensor(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        """Start tensor `name` (opening its shard when it is the first of it)."""
        index = self._shard_of[name]
        if index != self._index:
            self._close_shard()
            self._index = index
            planned = [(t.name, t.shape) for t in self._shards[index]]
            self._writer = ShardWriter(
                self._folder / self._names[index], planned=planned, metadata=self._metadata, durable=self._durable
            )
        assert self._writer is not None
        self._writer.begin_tensor(name, dtype, shape)

    def write(self, data: np.ndarray) -> None:
        """Append a chunk to the current tensor."""
        assert self._writer is not None
        self._writer.write(data)

    def restart_tensor(self, dtype: str) -> None:
        """Rewrite the current tensor from its start with another dtype."""
        assert self._writer is not None
        self._writer.restart_tensor(dtype)

    def close(self) -> None:
        """Close the last shard and write the index."""
        self._close_shard()
        weight_map = {t.name: self._names[i] for i, shard in enumerate(self._shards) for t in shard}
        write_json(
            self._folder / f"{self._prefix}.safetensors.index.json",
            {"metadata": {"total_size": self._data_bytes}, "weight_map": weight_map},
        )

    def _close_shard(self) -> None:
        if self._writer is not None:
            self.bytes_written += self._writer.close()
            self._data_bytes += self._writer.data_bytes
            self._writer = None
