"""`graft ... --help` as a terminal 100 columns wide shows it: docstrings flow as paragraphs, and a flag reads as a
flag."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import pytest
import typer
from typer.testing import CliRunner

from graftwork.deployments.cli import app

WIDTH = 80  # the help's width in a terminal 100 columns wide: click's, at most 80

DEMO_HELP = """\
Usage: graft demo [OPTIONS]

  Graftwork end to end on the CPU test bed: releases published one by one, each
  carried over, fine-tuned, evaluated, gated and promoted through Prefect; then
  the lineage and what recycling saved.

  Everything stays under the data dir; a second run reuses what exists. The runs
  go to the data dir's Prefect server (`graft ui` shows them): the one running,
  else one started for the demo and stopped after it (none when no release is
  left to run).

Options:
  --data-dir <path>               Graftwork's data dir (default: GRAFT_DATA_DIR,
                                  ~/.graftwork).
  --releases <int range>          Releases to publish, M1..M5.  [default: 4;
                                  1<=x<=5]
  --seed <int>                    The test bed's seed.  [default: 0]
  --fast                          Evaluate on 50 documents, and plain FT only at
                                  its start and end.
  --testbed <path>                Use (or build) the test bed in this folder
                                  instead.
  --mode <iterative|source|none|auto>
                                  The track's recycle mode (default: the shipped
                                  track's, iterative).
  --help                          Show this message and exit.
"""


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def _commands(group: object = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command and group of `graft` with its path of names, the root's first."""
    group = group or typer.main.get_command(app)
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


COMMANDS = [path for path, _ in _commands()]


def test_the_demo_help_flows_its_paragraphs_and_shows_fast_as_a_flag() -> None:
    assert _help("demo") == DEMO_HELP


def test_a_flag_with_a_negative_shows_both() -> None:
    assert "\n  --control / --no-control  Also pretrain a second-initialisation control model.\n" in _help(
        "testbed", "build"
    )


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "graft" for p in COMMANDS])
def test_every_help_shows_flags_bare_and_wraps_only_where_a_line_is_full(path: tuple[str, ...]) -> None:
    """A boolean option's line names the flag and nothing else before its help (no `<bool>`, no BOOLEAN); the
    description's lines break only where the next word would not fit, never at a docstring's own newlines."""
    command = dict(_commands())[path]
    text = _help(*path)
    assert "<bool>" not in text and "BOOLEAN" not in text
    lines = text.splitlines()
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) and not param.hidden:
            names = " / ".join(", ".join(opts) for opts in (param.opts, param.secondary_opts) if opts)
            assert any(line.startswith(f"  {names}  ") or line == f"  {names}" for line in lines), (names, text)
    description = lines[2 : next(i for i, line in enumerate(lines) if line in ("Arguments:", "Options:")) - 1]
    assert all(len(line) <= WIDTH for line in description), description
    for line, after in pairwise(description):
        if line and after:
            assert len(line) + 1 + len(after.split()[0]) > WIDTH, (line, after)
