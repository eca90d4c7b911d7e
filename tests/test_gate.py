"""The gate: each rule, its reason, and a missing metric."""

from __future__ import annotations

from dataclasses import dataclass

from graftwork.tasks.gate import Decision, GateRules, MetricRef, decide
from graftwork.terms import Verdict


@dataclass(frozen=True)
class R:
    task: str
    metric: str
    value: float
    filter: str = "none"
    stderr: float | None = None


ADD = MetricRef(task="addition", metric="exact_match")
MC = MetricRef(task="addition_mc", metric="acc")
RULES = GateRules(
    metrics=(ADD, MC), min_primary=0.5, beat_base_by=0.1, beat_champion_by=0.0, max_regression=0.02, stderr_multiplier=0
)


def scores(add: float, mc: float) -> list[R]:
    return [R("addition", "exact_match", add), R("addition_mc", "acc", mc), R("other", "acc", 0.1)]


def test_a_first_candidate_that_beats_the_base_is_promoted() -> None:
    d = decide(rules=RULES, candidate=scores(0.8, 0.6), base=scores(0.1, 0.3))
    assert d == Decision(
        verdict=Verdict.PROMOTE,
        reasons=(
            "pass: addition/exact_match: candidate 0.8000 ≥ required 0.5000",
            "pass: addition/exact_match: candidate 0.8000 ≥ base 0.1000 + margin 0.1000 = 0.2000",
            "pass: no champion yet on this channel",
        ),
    )


def test_a_candidate_below_the_champion_is_rejected_with_the_reason() -> None:
    d = decide(rules=RULES, candidate=scores(0.8, 0.6), base=scores(0.1, 0.3), champion=scores(0.85, 0.6))
    assert not d.promote
    assert "fail: addition/exact_match: candidate 0.8000 < champion 0.8500 + margin 0.0000 = 0.8500" in d.reasons


def test_a_regression_on_a_secondary_metric_blocks_promotion() -> None:
    d = decide(rules=RULES, candidate=scores(0.9, 0.5), base=scores(0.1, 0.3), champion=scores(0.85, 0.6))
    assert not d.promote
    assert d.reasons[-1] == "fail: addition_mc/acc: candidate 0.5000 < champion 0.6000 − tolerance 0.0200 = 0.5800"


def test_a_drop_within_the_noise_is_tolerated() -> None:
    rules = RULES.model_copy(update={"stderr_multiplier": 2.0})
    cand = [R("addition", "exact_match", 0.9), R("addition_mc", "acc", 0.55, stderr=0.03)]
    champ = [R("addition", "exact_match", 0.85), R("addition_mc", "acc", 0.6, stderr=0.04)]
    d = decide(rules=rules, candidate=cand, champion=champ)
    assert d.promote, d.reasons
    assert d.reasons[-1] == (
        "pass: addition_mc/acc: candidate 0.5500 ≥ champion 0.6000 − tolerance 0.1200 = 0.4800 "
        "(tolerance = max regression 0.0200 + 2 × stderr of the difference 0.0500)"
    )


def test_too_weak_a_candidate_fails_every_absolute_rule() -> None:
    d = decide(rules=RULES, candidate=scores(0.15, 0.3), base=scores(0.1, 0.3))
    assert [r.split(":")[0] for r in d.reasons] == ["fail", "fail", "pass"]


def test_a_missing_metric_rejects_and_says_which() -> None:
    d = decide(rules=RULES, candidate=scores(0.9, 0.6), champion=[R("addition", "exact_match", 0.5)])
    assert d == Decision(
        verdict=Verdict.REJECT,
        reasons=("fail: the champion's results lack addition_mc/acc (they have: addition/exact_match)",),
    )
