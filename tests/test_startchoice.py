"""How auto's choice reads in `graft registry show` and in the run's start artifact when the paired check
against the plain release decided it; and the record a candidate keeps of it, read back as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftwork.errors import FinetuneConfigError
from graftwork.flows.autostart import _choice, _why, start_table
from graftwork.tasks.starts.choice import PLAIN, PlainCheck, ProbeResult, Start, StartRecord, StartScore
from graftwork.tasks.starts.describe import describe
from graftwork.terms import RecycleMode


def _result(*, kept: bool) -> ProbeResult:
    check = PlainCheck(start="dir@1", diff=0.04, lower_bound=0.01, confidence=0.95, resamples=2000, n=100,
                       p_value=0.0625 if not kept else 0.001, kept=kept)  # fmt: skip
    return ProbeResult(
        kind="zero_shot",
        scores={PLAIN: StartScore(path="p", score=0.0), "dir@1": StartScore(path="d", score=0.04)},
        chosen="dir@1" if kept else PLAIN,
        probe_steps=0,
        evaluations=2,
        full_steps=200,
        seconds=1.0,
        versus_plain=check,
    )


def test_a_refused_recycled_start_is_explained_in_the_log_the_registry_and_the_artifact() -> None:
    result = _result(kept=False)
    why = _why(result)
    assert why.startswith(
        "dir@1 scored best by the zero_shot probe, but only +0.0400 above plain (lower bound +0.0100 at 95%, "
        "n = 100): not surely better, so the release is fine-tuned plain; probe cost 0 steps"
    )
    record = StartRecord(diffs={}, chosen=PLAIN, why=why, probe=result)
    lines = describe(record)
    assert lines[-1] == (
        "dir@1 against plain on 100 probe documents: +0.0400, lower bound +0.0100 at 95% (2000 resamples), "
        "one-sided McNemar p = 0.0625: not surely better: plain fine-tuning"
    )
    assert lines[-2] == "probe zero_shot: plain 0.0000, dir@1 0.0400"
    table = start_table(record)
    assert "| plain (chosen) | 0.0000 | 0 |" in table and table.endswith(lines[-1])


def test_a_kept_recycled_start_names_its_margin_over_plain() -> None:
    why = _why(_result(kept=True))
    assert why.startswith("dir@1 scored best by the zero_shot probe (0.0400; +0.0400 above plain, lower bound +0.0100)")
    record = StartRecord(diffs={}, chosen="dir@1", why=why, probe=_result(kept=True))
    assert describe(record)[-1].endswith("one-sided McNemar p = 0.001: kept")


def test_the_kept_record_reads_back_as_the_start_it_chose(tmp_path: Path) -> None:
    """The JSON a candidate's row holds is the record, and the choice read back from it is the same start."""
    record = StartRecord(
        diffs={"iterative": "the previous candidate's own Δ"},
        diff_ids={"iterative": "diff-3"},
        chosen="iterative@0.75",
        why="scored best",
        probe=_result(kept=True),
    )
    back = StartRecord.model_validate(record.model_dump(mode="json"))
    assert back == record and back.start == Start("iterative", 0.75) and back.start.name == "iterative@0.75"
    choice = _choice(back, work=tmp_path, base=tmp_path / "base")
    assert (choice.start, choice.carried_diff, choice.mode, choice.alpha) == (
        tmp_path / "starts" / "iterative@0.75",
        "diff-3",
        RecycleMode.ITERATIVE,
        0.75,
    )
    assert choice.carry_reason == "auto: the previous candidate's own Δ, at α = 0.75"
    plain = _choice(StartRecord(diffs={}, chosen=PLAIN, why="first"), work=tmp_path, base=tmp_path / "base")
    assert (plain.start, plain.carried_diff, plain.mode, plain.alpha) == (
        tmp_path / "base",
        None,
        RecycleMode.NONE,
        0.0,
    )


@pytest.mark.parametrize("name", ["", "iterative", "iterative@", "@0.5", "iterative@half", "iterative@nan"])
def test_a_start_name_that_is_neither_plain_nor_role_at_alpha_is_refused(name: str) -> None:
    with pytest.raises(FinetuneConfigError, match=r"is neither 'plain' nor ROLE@ALPHA"):
        Start.named(name)
