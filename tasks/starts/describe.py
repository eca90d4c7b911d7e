"""How `recycle.mode: auto` chose a candidate's start, in words: for `graft registry show` and the run's log.
Reads the record a candidate keeps (`candidates.start_choice`, a `StartRecord` made by `flows.autostart`);
imports nothing heavy, so that the CLI stays quick to start."""

from __future__ import annotations

from .choice import PlainCheck, StartRecord


def describe(record: StartRecord) -> list[str]:
    """The choice, the pre-check's overall figures, each start's probe score and the best recycled start's paired
    check against the plain release, one line each."""
    lines = [f"auto chose {record.chosen}: {record.why}"]
    check = record.precheck
    if check is not None:
        shift = check.overall
        lines.append(
            f"pre-check: the base moved {shift.base_shift:.4f} of the previous release's norm "
            f"({shift.shift_to_diff:.4f} of ‖Δ‖, cos(Δ, move) {shift.cosine:+.4f}); lineage broken above "
            f"{check.threshold:g}: {'yes' if check.lineage_broken else 'no'}"
        )
    probe = record.probe
    if probe is not None:
        scores = ", ".join(f"{name} {score.score:.4f}" for name, score in probe.scores.items())
        lines.append(f"probe {probe.kind}: {scores}")
        if probe.versus_plain is not None:
            lines.append(describe_check(probe.versus_plain))
    return lines


def describe_check(check: PlainCheck) -> str:
    """The best recycled start's paired check against the plain release (`ProbeResult.versus_plain`), in words."""
    verdict = "kept" if check.kept else "not surely better: plain fine-tuning"
    return (
        f"{check.start} against plain on {check.n} probe documents: {check.diff:+.4f}, lower bound "
        f"{check.lower_bound:+.4f} at {check.confidence:.0%} ({check.resamples} resamples)"
        + ("" if check.p_value is None else f", one-sided McNemar p = {check.p_value:.3g}")
        + f": {verdict}"
    )
