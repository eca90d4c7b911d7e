"""How a recycle run tells its story in the Prefect UI: a table of eval results (candidate against
champion, base and base + Δ), the paired comparison with the champion, and a markdown summary of the gate's
decision and the Δ lineage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ..tasks.evaluate import EvalRecord, Evaluation
from ..tasks.evidence import compare, table
from ..tasks.gate import Decision, GateRules
from ..tasks.hub import LOCAL_PREFIX, ReleaseRef
from ..terms import EvalSubject, Verdict
from .names import run_name, step_key

COLUMNS = (EvalSubject.CANDIDATE, EvalSubject.CHAMPION, EvalSubject.BASE, EvalSubject.TRANSFERRED)
Scores = Mapping[EvalSubject, Sequence[EvalRecord]]


def eval_table(scores: Scores) -> list[dict[str, str]]:
    """One row per metric, one column per model that was scored."""
    values = {subject: {(r.task, r.metric, r.filter): r for r in records} for subject, records in scores.items()}
    metrics = sorted({key for found in values.values() for key in found})
    rows = []
    for task, metric, flt in metrics:
        row = {"metric": f"{task} {metric}" + ("" if flt == "none" else f" [{flt}]")}
        for subject in (c for c in COLUMNS if c in values):
            record = values[subject].get((task, metric, flt))
            row[subject] = "—" if record is None else _cell(record)
        rows.append(row)
    return rows


def _cell(record: EvalRecord) -> str:
    return f"{record.value:.4f}" + ("" if record.stderr is None else f" ± {record.stderr:.4f}")


def report_run(
    *,
    track: str,
    release: ReleaseRef,
    carried: str | None,
    carry_reason: str,
    new_diff: str,
    scores: Scores,
    decision: Decision,
    losses: Sequence[tuple[int, float]],
) -> None:
    """Publish the run's eval table and its decision summary as artifacts, keyed by the track and the
    release's label (`names.step_key`), the summary headed by the run's name and the release's ref."""
    title = run_name(track=track, release=release)
    evals = step_key(track=track, release=release, step="evals")
    create_table_artifact(table=eval_table(scores), key=evals, description=title)
    verdict = {Verdict.PROMOTE: "promoted", Verdict.WAIT: "waiting for approval", Verdict.REJECT: "rejected"}[
        decision.verdict
    ]
    lineage = f"{carried} → {new_diff}" if carried else f"{new_diff} (first of its chain: plain fine-tuning)"
    training = f"{len(losses)} steps, loss {losses[0][1]:.4f} → {losses[-1][1]:.4f}" if losses else "no steps"
    markdown = "\n".join(
        [
            f"# {title}",
            release_line(release),
            "",
            f"**Gate: {verdict}**",
            "",
            *(f"- {reason}" for reason in decision.reasons),
            "",
            f"Δ lineage: {lineage}",
            "",
            f"Carried: {carry_reason}",
            "",
            f"Fine-tuning: {training}",
        ]
    )
    decision_key = step_key(track=track, release=release, step="decision")
    create_markdown_artifact(markdown=markdown, key=decision_key, description=verdict)


def release_line(release: ReleaseRef) -> str:
    """Which release a run was for, in full: `Release: folder 04-M4, content hash 5c81…` (local), or
    `Release: acme/bed at r1, commit 5c81…` (Hub)."""
    if release.repo_id.startswith(LOCAL_PREFIX):
        return f"Release: folder {release.ref}, content hash {release.revision}"
    at = f" at {release.ref}" if release.ref else ""
    return f"Release: {release.repo_id}{at}, commit {release.revision}"


def comparison_artifact(
    candidate: Evaluation, champion: Evaluation, *, names: tuple[str, str], rules: GateRules, key: str
) -> None:
    """The paired comparison of a candidate's evaluation with the champion's (`names`: theirs), as the run's
    markdown artifact `key`."""
    rows = compare(candidate, champion, confidence=0.95, resamples=rules.resamples, seed=rules.seed)
    markdown = f"# {names[0]} against champion {names[1]}\n\n" + table(rows, a="candidate", b="champion")
    create_markdown_artifact(markdown=markdown, key=key, description=f"{names[0]} vs {names[1]}")
