"""The demo's table: one row per release (its base, base + Δ, the candidate, plain fine-tuning with the
same budget, and the gate's decision), read from the registry, and the summary under it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..fs import Say
from ..storage import Registry, evals, runs
from ..storage import registry as rows
from ..storage.db import session_scope
from ..storage.status import deciding_reason
from ..tasks.track import TrackSpec
from ..terms import EvalSubject

HEADER = f"{'release':<8} {'base':>6} {'base+Δ':>7} {'FT(base+Δ)':>11} {'plain FT':>9}  gate"


@dataclass(frozen=True)
class ReleaseRow:
    """One line of the demo's table."""

    release: str
    base: float
    transferred: float | None
    candidate: float
    plain: float
    plain_steps_to_transfer: int | None
    decision: str
    reason: str


def decided(registry: Registry, *, track: str, ref: str) -> bool:
    """Whether the release published as `ref` has a candidate and the gate's decision on it."""
    with session_scope(registry.engine) as session:
        candidate = runs.candidate_for(session, track=rows.get_track(session, name=track), ref=ref)
        return candidate is not None and runs.decision_for(session, candidate=candidate) is not None


def release_row(
    registry: Registry, *, track: str, spec: TrackSpec, name: str, ref: str, curve: list[tuple[int, float]]
) -> ReleaseRow:
    """The row of the release published as `ref` (decided), with its plain-FT curve."""
    primary = spec.gate.metrics[0]
    with session_scope(registry.engine) as session:
        candidate = runs.candidate_for(session, track=rows.get_track(session, name=track), ref=ref)
        assert candidate is not None, f"release {ref} has a candidate"
        found = evals.release_scores(session, candidate=candidate, metric=primary.metric)
        scores = {r.subject: r.value for r in found}
        promotion = runs.decision_for(session, candidate=candidate)
        assert promotion is not None, f"release {ref} has a decision"
        reason = deciding_reason(promotion.reasons) or ""
        decision = str(promotion.decision)
    transferred = scores.get(EvalSubject.TRANSFERRED)
    return ReleaseRow(
        release=name,
        base=scores[EvalSubject.BASE],
        transferred=transferred,
        candidate=scores[EvalSubject.CANDIDATE],
        plain=curve[-1][1],
        plain_steps_to_transfer=None if transferred is None else next((s for s, v in curve if v >= transferred), None),
        decision=decision,
        reason=reason,
    )


def line(row: ReleaseRow) -> str:
    """The row as the table prints it: scores in percent with one decimal, so that a score of 0.005 (one sum
    in 200) reads 0.5, not a rounded-up 0.01."""
    transferred = "—" if row.transferred is None else f"{100 * row.transferred:.1f}"
    return (
        f"{row.release:<8} {100 * row.base:>6.1f} {transferred:>7} {100 * row.candidate:>11.1f} "
        f"{100 * row.plain:>9.1f}  {row.decision}: {row.reason.removeprefix('pass: ').removeprefix('fail: ')}"
    )


def summary(table: list[ReleaseRow], *, track: str, data_dir: Path, log: Path, say: Say) -> None:
    """What the columns mean, the compute recycling saved, and where to look next."""
    say("")
    say("Scores are the gate's primary metric, in %. base: the bare release; base+Δ: the previous candidate's")
    say("Δ added, no training; FT(base+Δ): the candidate (Algorithm 1); plain FT: the bare release fine-tuned")
    say("with the same budget.")
    saved = [r for r in table if r.transferred is not None]
    if saved:
        say("Compute that recycling saved (plain-FT steps needed to reach what base+Δ has with no training):")
        for r in saved:
            steps = "more than the whole budget" if r.plain_steps_to_transfer is None else r.plain_steps_to_transfer
            say(f"  {r.release}: {steps}")
    say("")
    say(f"Diff lineage: graft --data-dir {data_dir} registry lineage {track}")
    say(f"See the runs in the Prefect UI: graft --data-dir {data_dir} ui")
    say(f"The libraries' own logs: {log}")
