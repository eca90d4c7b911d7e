"""How auto's choice reads in `graft registry show` and in the run's start artifact when the paired check
against the plain release decided it."""

from __future__ import annotations

from graftwork.flows.autostart import _why, start_table
from graftwork.tasks.starts.describe import describe
from graftwork.tasks.starts.make import PLAIN
from graftwork.tasks.starts.probes import PlainCheck, ProbeResult, StartScore


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
    record = {"chosen": PLAIN, "why": why, "probe": result.model_dump(mode="json")}
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
    assert describe({"chosen": "dir@1", "why": why, "probe": _result(kept=True).model_dump(mode="json")})[-1].endswith(
        "one-sided McNemar p = 0.001: kept"
    )
