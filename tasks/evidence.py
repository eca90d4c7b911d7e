"""Paired comparison of two evaluations of the same samples, when (and only when) their fingerprints say they
were made alike: what the gate's paired rules read (`pairs`), and the table a run and `graft compare` show
(`compare`, `table`). Pure: evaluations in, comparisons out."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from .gate import MetricRef, Samples
from .paired import PairedDiff, paired_difference
from .results import EvalRecord, Evaluation, SampleScore


@dataclass(frozen=True)
class Comparison:
    """One metric of one task in two evaluations: both values, and their paired difference (None: why not)."""

    ref: MetricRef
    a: float
    b: float
    paired: PairedDiff | None
    why_not: str | None
    disagreements: tuple[tuple[Hashable, str, str, str], ...] = ()

    @property
    def a_minus_b(self) -> float:
        return self.a - self.b


def comparable(a: EvalRecord, b: EvalRecord) -> str | None:
    """None when two records of a task were evaluated alike (their fingerprints match but for the model);
    else why not, in words."""
    if a.fingerprint is None or b.fingerprint is None:
        which = "either" if a.fingerprint is None and b.fingerprint is None else ("A" if a.fingerprint is None else "B")
        return f"{which} evaluation has no fingerprint (made before Graftwork kept them)"
    different = a.fingerprint.differences(b.fingerprint)
    return None if not different else "evaluated differently: " + "; ".join(different)


def pairs(a: Evaluation, b: Evaluation, *, refs: Iterable[MetricRef]) -> dict[MetricRef, tuple[Samples, Samples] | str]:
    """Per metric, A's and B's per-sample values, aligned by task, filter and document id; or why they cannot
    be paired (a record or its samples missing, fingerprints that differ, different documents)."""
    found: dict[MetricRef, tuple[Samples, Samples] | str] = {}
    mine, theirs = _by_ref(a.records), _by_ref(b.records)
    for ref in refs:
        if ref not in mine or ref not in theirs:
            found[ref] = f"{ref} is missing from {'A' if ref not in mine else 'B'}'s results"
            continue
        why = comparable(mine[ref], theirs[ref])
        if why is not None:
            found[ref] = why
            continue
        left = a.scores_of(task=ref.task, metric=ref.metric, filter=ref.filter)
        right = b.scores_of(task=ref.task, metric=ref.metric, filter=ref.filter)
        if not left or not right:
            found[ref] = f"{'A' if not left else 'B'} kept no per-sample results for {ref}"
        elif left.keys() != right.keys():
            found[ref] = f"A and B were scored on different documents ({len(left)} and {len(right)})"
        else:
            found[ref] = (left, right)
    return found


def compare(
    a: Evaluation, b: Evaluation, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0, examples: int = 3
) -> list[Comparison]:
    """Every metric A and B both report: both values and, where they can be paired, the paired difference
    A − B with its bootstrap interval, the McNemar p-value for 0/1 metrics, and a few disagreements
    (document id, target, A's response, B's response)."""
    mine, theirs = _by_ref(a.records), _by_ref(b.records)
    shared = [ref for ref in mine if ref in theirs]
    found = pairs(a, b, refs=shared)
    out = []
    for ref in shared:
        pair = found[ref]
        if isinstance(pair, str):
            out.append(Comparison(ref, mine[ref].value, theirs[ref].value, None, pair))
            continue
        diff = paired_difference(
            a=pair[0], b=pair[1], confidence=confidence, resamples=resamples, seed=seed, examples=examples
        )
        out.append(Comparison(ref, mine[ref].value, theirs[ref].value, diff, None, _shown(a, b, keys=diff.examples)))
    return out


def _shown(a: Evaluation, b: Evaluation, *, keys: Sequence[Hashable]) -> tuple[tuple[Hashable, str, str, str], ...]:
    left: dict[Hashable, SampleScore] = {s.key: s for s in a.samples}
    right: dict[Hashable, SampleScore] = {s.key: s for s in b.samples}
    return tuple((key, left[key].target, left[key].response, right[key].response) for key in keys)


def _by_ref(records: Iterable[EvalRecord]) -> dict[MetricRef, EvalRecord]:
    return {MetricRef(task=r.task, metric=r.metric, filter=r.filter): r for r in records}


def table(rows: Sequence[Comparison], *, a: str, b: str) -> str:
    """The comparison as a markdown table, with the disagreements below it."""
    head = (
        f"| task / metric | {a} | {b} | {a} − {b} | 95 % CI | McNemar p | n | disagree |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for row in rows:
        found = row.paired
        if found is None:
            lines.append(
                f"| {row.ref} | {row.a:.4f} | {row.b:.4f} | {row.a_minus_b:+.4f} | not paired: {row.why_not} | | | |"
            )
            continue
        mcnemar = "" if found.mcnemar_p is None else f"{found.mcnemar_p:.4g}"
        lines.append(
            f"| {row.ref} | {row.a:.4f} | {row.b:.4f} | {found.diff:+.4f} | [{found.low:+.4f}, {found.high:+.4f}] "
            f"| {mcnemar} | {found.n} | {found.disagree} |"
        )
    resampled = {r.paired.resamples for r in rows if r.paired is not None}
    seeds = {r.paired.seed for r in rows if r.paired is not None}
    if resampled:
        lines.append("")
        lines.append(
            f"Paired bootstrap over the documents both were scored on: {', '.join(map(str, sorted(resampled)))} "
            f"resamples, seed {', '.join(map(str, sorted(seeds)))}; McNemar's exact test for 0/1 metrics."
        )
    shown = [(row.ref, d) for row in rows for d in row.disagreements]
    if shown:
        lines += ["", f"Where they disagree (document: target / {a} / {b}):", ""]
        lines += [
            f"- {ref} doc {key[-1] if isinstance(key, tuple) else key}: {t!r} / {x!r} / {y!r}"
            for ref, (key, t, x, y) in shown
        ]
    return "\n".join(lines)
