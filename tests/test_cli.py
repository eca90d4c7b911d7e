"""The `graft` command: summaries, errors a user sees, sizes, and the demo."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from graftwork.deployments.cli import app, parse_size, rate
from tests.conftest import VOCAB, Family

runner = CliRunner()


def test_transfer_prints_a_summary(bf16_family: Family, tmp_path: Path) -> None:
    args = ["transfer", "--finetuned", str(bf16_family.finetuned), "--base", str(bf16_family.base)]
    result = runner.invoke(app, [*args, "--target", str(bf16_family.target), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert f"transfer: wrote {tmp_path / 'o'}" in result.stdout
    assert "tensors 21 in 1 shard(s)" in result.stdout
    assert re.search(r" s \(\d+\.\d MB/s\)\n", result.stdout)  # a small model's rate, not "0.00 GB/s"
    assert f"vocabulary rows: {len(VOCAB)} transferred, 0 kept, 0 carried" in result.stdout


def test_rates_read_in_the_unit_that_shows_them() -> None:
    assert (rate(180_000, 0.04), rate(999_000_000, 1.0), rate(4_010_000_000, 1.66)) == (
        "4.5 MB/s",
        "999.0 MB/s",
        "2.42 GB/s",
    )


def test_engine_commands_freeze_the_engine_import_and_leave_the_collector_on(
    bf16_family: Family, tmp_path: Path
) -> None:
    gc.unfreeze()
    try:
        args = ["diff", str(bf16_family.finetuned), str(bf16_family.base), "-o", str(tmp_path / "d")]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert gc.isenabled()
        assert gc.get_freeze_count() > 10_000  # the interpreter's objects so far, torch's among them
    finally:
        gc.unfreeze()


def test_diff_then_apply_through_the_cli(bf16_family: Family, tmp_path: Path) -> None:
    result = runner.invoke(app, ["diff", str(bf16_family.finetuned), str(bf16_family.base), "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "diff.json").is_file()
    result = runner.invoke(
        app, ["apply", str(tmp_path / "d"), str(bf16_family.target), "-o", str(tmp_path / "m"), "--alpha", "0.5"]
    )
    assert result.exit_code == 0, result.output
    assert "apply: wrote" in result.stdout


def test_errors_are_one_line_and_exit_1(bf16_family: Family, tmp_path: Path) -> None:
    result = runner.invoke(app, ["diff", str(tmp_path / "missing"), str(bf16_family.base), "-o", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "is not a model folder" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("text", "size"), [("5GB", 5 * 2**30), ("500MB", 500 * 2**20), ("1.5 KiB", 1536), ("42", 42)])
def test_shard_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_shard_size_is_refused() -> None:
    with pytest.raises(typer.BadParameter, match="'five' is not a size"):
        parse_size("five")
