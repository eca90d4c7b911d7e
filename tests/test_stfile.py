"""The streaming reader: row ranges mapped from the file, never written back, and a short file named."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from graftwork.errors import ModelFolderError
from graftwork.tasks.io.stfile import TensorReader, read_header
from graftwork.tasks.io.torchbits import as_array


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "odd": torch.randn(3, 5, generator=g).to(torch.float16),  # 30 bytes: the next tensor starts unaligned
            "w": torch.randn(1000, 37, generator=g).to(torch.bfloat16),
            "scalar": torch.tensor(2.5, dtype=torch.float32),
        },
        path,
    )
    return path


def test_row_ranges_equal_what_safetensors_loads(shard: Path) -> None:
    infos = {i.name: i for i in read_header(shard)[0]}
    loaded = load_file(shard)
    reader = TensorReader()
    try:
        for start, stop in ((0, 1000), (0, 1), (999, 1000), (123, 456), (500, 500)):
            rows = reader.read_rows(infos["w"], start, stop)
            assert rows.dtype == np.uint16 and rows.shape == (stop - start, 37)  # bf16 bits
            assert np.array_equal(rows.reshape(-1), as_array(loaded["w"][start:stop]))
        odd = reader.read_rows(infos["odd"], 1, 3)
        assert odd.dtype == np.int16 and np.array_equal(odd.reshape(-1), as_array(loaded["odd"][1:3]))  # fp16 bits
        assert reader.read_rows(infos["scalar"], 0, 1).item() == 2.5
    finally:
        reader.close()


def test_writing_to_a_read_array_leaves_the_file_alone(shard: Path) -> None:
    before = hashlib.sha256(shard.read_bytes()).hexdigest()
    info = next(i for i in read_header(shard)[0] if i.name == "w")
    reader = TensorReader()
    rows = reader.read_rows(info, 10, 20)
    reader.close()
    rows.fill(7)  # the array outlives the reader and stays writable: its pages are copied on write
    assert bool((rows == 7).all())
    del rows
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == before


def test_a_file_cut_short_after_its_header_was_read_is_named(shard: Path) -> None:
    info = next(i for i in read_header(shard)[0] if i.name == "w")
    os.truncate(shard, info.start + 100)
    reader = TensorReader()
    try:
        with pytest.raises(ModelFolderError, match=r"model\.safetensors ended while reading tensor 'w'"):
            reader.read_rows(info, 0, 1000)
    finally:
        reader.close()
