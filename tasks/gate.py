"""The gate: the rules that decide whether a candidate replaces a track's champion.

A gate looks at named metrics of the eval results. The first is the primary metric: the candidate
must reach `min_primary`, and the bare base's value plus `beat_base_by` and the champion's plus
`beat_champion_by`. No metric may fall below the champion's by more than `max_regression` plus
`stderr_multiplier` standard errors of the difference (so noise alone does not block a candidate).
A metric missing from the results rejects. Every rule checked yields one reason, so a decision can
always be explained.

Two rules read the paired evidence of the candidate and the champion scored on the same samples
(`tasks.paired`): `non_inferior` promotes only if the one-sided lower confidence bound of candidate −
champion is above −margin on every gated metric, and `superior` only if it is above 0 on the primary one.
With `approval: required`, a candidate that passes every rule still waits for a person's decision.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..terms import ApprovalRule, GateDecision, Verdict
from .paired import PairedDiff, paired_difference

Samples = Mapping[Hashable, float]


class Scored(Protocol):
    """One metric of one task (an eval record)."""

    @property
    def task(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def filter(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def stderr(self) -> float | None: ...


class MetricRef(BaseModel):
    """A metric of a task, as lm-eval names it (`exact_match` under filter `none`, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    task: str
    metric: str
    filter: str = "none"

    def __str__(self) -> str:
        return f"{self.task}/{self.metric}" + ("" if self.filter == "none" else f"[{self.filter}]")


class NonInferior(BaseModel):
    """Candidate − champion must stay above −margin, at this confidence, on every gated metric."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    margin: float = Field(0.01, ge=0, description="How far below the champion the candidate may be.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Of the one-sided lower bound.")


class Superior(BaseModel):
    """Candidate − champion must be above 0, at this confidence, on the primary metric."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    confidence: float = Field(0.95, gt=0, lt=1, description="Of the one-sided lower bound.")


class GateRules(BaseModel):
    """What a candidate must show to be promoted."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    metrics: tuple[MetricRef, ...] = Field(min_length=1, description="Metrics the gate reads; the first is primary.")
    min_primary: float | None = Field(None, description="The primary metric must reach this value.")
    beat_base_by: float | None = Field(0.0, description="Primary must reach the bare base's plus this (None: skip).")
    beat_champion_by: float = Field(0.0, description="Primary must reach the champion's plus this.")
    max_regression: float = Field(0.02, ge=0, description="No metric may fall further below the champion's ...")
    stderr_multiplier: float = Field(
        2.0, ge=0, description="... than this plus this many standard errors of the difference (0: ignore stderr)."
    )
    non_inferior: NonInferior | None = Field(None, description="A paired non-inferiority rule (None: none).")
    superior: Superior | None = Field(None, description="A paired superiority rule on the primary metric.")
    resamples: int = Field(10_000, ge=100, description="Paired bootstrap resamples.")
    seed: int = Field(0, description="The paired bootstrap's seed.")
    approval: ApprovalRule = Field(
        ApprovalRule.NONE, description="required: a candidate that passes waits for a person's approval."
    )
    approval_timeout_hours: float = Field(
        168, gt=0, description="How long a suspended run waits for a person before it fails (the candidate waits on)."
    )

    @property
    def paired(self) -> bool:
        """Whether a rule reads paired evidence."""
        return self.non_inferior is not None or self.superior is not None


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and its reasons, one per rule checked (`Verdict.WAIT` when the rules passed and the
    candidate waits for a person's approval)."""

    verdict: Verdict
    reasons: tuple[str, ...]

    @property
    def promote(self) -> bool:
        """Whether the candidate is promoted."""
        return self.verdict is Verdict.PROMOTE

    @classmethod
    def recorded(cls, decision: GateDecision, reasons: Iterable[str]) -> Decision:
        """The verdict a promotion row records: promote when it promoted, else reject."""
        return cls(Verdict.PROMOTE if decision is GateDecision.PROMOTE else Verdict.REJECT, tuple(reasons))


def decide(
    *,
    rules: GateRules,
    candidate: Iterable[Scored],
    base: Iterable[Scored] | None = None,
    champion: Iterable[Scored] | None = None,
    pairs: Mapping[MetricRef, tuple[Samples, Samples] | str] | None = None,
) -> Decision:
    """Apply the rules to a candidate's results, against the bare base's and the champion's.

    `pairs` holds, per gated metric, the candidate's and the champion's per-sample values (keyed alike), or why
    there are none; the paired rules read it. A pure function: one reason per rule, `fail: ...` or
    `pass: ...`; promote only if all pass.
    """
    checks: list[tuple[bool, str]] = []
    cand = _found(candidate)
    base_found = None if base is None else _found(base)
    champ = None if champion is None else _found(champion)
    for whose, found in (("candidate", cand), ("base", base_found), ("champion", champ)):
        missing = [] if found is None else [str(ref) for ref in rules.metrics if ref not in found]
        if missing:
            have = ", ".join(sorted(str(k) for k in found or {})) or "nothing"
            checks.append((False, f"the {whose}'s results lack {', '.join(missing)} (they have: {have})"))
    if checks:
        return _decision(checks)
    primary = rules.metrics[0]
    value = cand[primary].value
    if rules.min_primary is not None:
        ok = value >= rules.min_primary
        checks.append((ok, f"{primary}: candidate {value:.4f} {_at_least(ok)} required {rules.min_primary:.4f}"))
    if base_found is not None and rules.beat_base_by is not None:
        checks.append(_beats(primary, value, "base", base_found[primary].value, rules.beat_base_by))
    if champ is None:
        checks.append((True, "no champion yet on this channel"))
        return _decision(checks)
    checks.append(_beats(primary, value, "champion", champ[primary].value, rules.beat_champion_by))
    for ref in rules.metrics:
        mine, theirs = cand[ref].value, champ[ref].value
        stderr = math.hypot(cand[ref].stderr or 0.0, champ[ref].stderr or 0.0)
        allowed = rules.max_regression + rules.stderr_multiplier * stderr
        ok = theirs - mine <= allowed
        why = (
            f"{ref}: candidate {mine:.4f} {_at_least(ok)} champion {theirs:.4f} − tolerance {allowed:.4f} "
            f"= {theirs - allowed:.4f}"
        )
        if rules.stderr_multiplier and stderr:
            why += (
                f" (tolerance = max regression {rules.max_regression:.4f} + {rules.stderr_multiplier:g} × "
                f"stderr of the difference {stderr:.4f})"
            )
        checks.append((ok, why))
    if rules.non_inferior is not None:
        rule = rules.non_inferior
        for ref in rules.metrics:
            checks.append(
                _paired_rule("non_inferior", ref, (pairs or {}).get(ref), rules, rule.confidence, rule.margin)
            )
    if rules.superior is not None:
        checks.append(
            _paired_rule("superior", primary, (pairs or {}).get(primary), rules, rules.superior.confidence, 0)
        )
    return _decision(checks)


def _paired_rule(
    name: str,
    ref: MetricRef,
    pair: tuple[Samples, Samples] | str | None,
    rules: GateRules,
    confidence: float,
    margin: float,
) -> tuple[bool, str]:
    """A paired rule: the one-sided lower bound of candidate − champion above −margin, and its reason."""
    if not isinstance(pair, tuple):
        return False, f"{name}: {ref}: no paired evidence ({pair or 'no per-sample results'})"
    found = paired_difference(a=pair[0], b=pair[1], confidence=confidence, resamples=rules.resamples, seed=rules.seed)
    ok = found.lower_bound > -margin
    bound = f"one-sided {found.confidence:.0%} lower bound {found.lower_bound:+.4f} {'>' if ok else '≤'} {-margin:+.4f}"
    return ok, f"{name}: {ref}: {paired_line(found)}; {bound}"


def paired_line(found: PairedDiff) -> str:
    """A paired difference in words: `candidate − champion = +0.0350, 95 % CI [+0.0150, +0.0550] (paired
    bootstrap, 10000 resamples, seed 0, n=400; McNemar p = 0.0007)`."""
    mcnemar = "" if found.mcnemar_p is None else f"; McNemar p = {found.mcnemar_p:.4g}"
    return (
        f"candidate − champion = {found.diff:+.4f}, {found.confidence:.0%} CI [{found.low:+.4f}, {found.high:+.4f}] "
        f"(paired bootstrap, {found.resamples} resamples, seed {found.seed}, n={found.n}{mcnemar})"
    )


def _beats(ref: MetricRef, value: float, whose: str, theirs: float, margin: float) -> tuple[bool, str]:
    """The rule that the candidate's primary metric reaches `whose` value plus `margin`, and its reason."""
    need = theirs + margin
    ok = value >= need
    return ok, f"{ref}: candidate {value:.4f} {_at_least(ok)} {whose} {theirs:.4f} + margin {margin:.4f} = {need:.4f}"


def _at_least(ok: bool) -> str:
    return "≥" if ok else "<"


def _decision(checks: list[tuple[bool, str]]) -> Decision:
    return Decision(
        verdict=Verdict.PROMOTE if all(ok for ok, _ in checks) else Verdict.REJECT,
        reasons=tuple(("pass: " if ok else "fail: ") + why for ok, why in checks),
    )


def _found(records: Iterable[Scored]) -> dict[MetricRef, Scored]:
    return {MetricRef(task=r.task, metric=r.metric, filter=r.filter): r for r in records}
