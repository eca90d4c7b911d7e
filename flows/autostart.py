"""`recycle.mode: auto`: where a release's fine-tune starts, decided by measurement and shown.

For a new release M_i it takes the Δs the registry holds for the track's carry rule, Δ^iter (the previous
candidate's own) and Δ^source (the first of its lineage), and first runs the transferability pre-check of
Δ^iter onto M_i (`tasks.starts.precheck`): a release whose weights moved too far from the release Δ was made on
(another initialisation, a broken lineage) is fine-tuned plain, with no probe. Otherwise it builds M_i and
M_i + α·Δ for each Δ and each α of the track's grid, scores each with the track's probe
(`tasks.starts.score_starts`) and fine-tunes from the best. The choice, the pre-check's figures and every
start's score are returned as a `StartRecord` for the candidate's row, logged, and drawn as a table artifact.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from ..fs import write_text_atomic
from ..operations.diffs import streamed_diff
from ..operations.names import release_ref
from ..operations.settings import Workspace
from ..storage import registry as rows
from ..storage import runs
from ..storage.db import session_scope
from ..tasks.hub import download
from ..tasks.starts.choice import PLAIN, ProbeResult, StartRecord
from ..tasks.starts.describe import describe_check
from ..tasks.starts.make import make_starts
from ..tasks.starts.precheck import precheck
from ..tasks.starts.probes import score_starts
from ..tasks.track import TrackSpec
from ..terms import RecycleMode

ROLES = {"iterative": RecycleMode.ITERATIVE, "source": RecycleMode.SOURCE}


@dataclass(frozen=True)
class StartChoice:
    """The start `auto` chose: its folder, the Δ it carries (None: the plain release) and α, and the record."""

    start: Path
    carried_diff: str | None
    carry_reason: str
    mode: RecycleMode
    alpha: float
    record: StartRecord


@task
def choose_start(
    where: Workspace, *, work: Path, release_id: int, base: Path, spec: TrackSpec, key: str
) -> StartChoice:
    """Pre-check, build and probe the starts of the release `release_id` (model folder `base`) in `work`,
    and return the one to fine-tune from. A resumed run finds its choice in `work/start-choice.json`.

    Raises:
        ReleaseOrderError: the release this one carries from is not done.
        What `precheck`, `make_starts` and `score_starts` raise (a Δ that does not fit the release, bad probe data).
    """
    saved = work / "start-choice.json"
    if saved.is_file():
        done = StartRecord.model_validate_json(saved.read_text())
        get_run_logger().info("auto: chosen by an earlier attempt: %s", done.chosen)
        return _choice(done, work=work, base=base)
    diffs, reasons, previous = _diffs(where, release_id=release_id, spec=spec)
    record = _measure(where, diffs=diffs, reasons=reasons, previous=previous, work=work, base=base, spec=spec)
    write_text_atomic(saved, record.model_dump_json())
    create_markdown_artifact(markdown=start_table(record), key=key, description=f"auto: {record.chosen}")
    get_run_logger().info("auto: %s (%s)", record.chosen, record.why)
    return _choice(record, work=work, base=base)


def _measure(
    where: Workspace,
    *,
    diffs: dict[str, str],
    reasons: dict[str, str],
    previous: Path,
    work: Path,
    base: Path,
    spec: TrackSpec,
) -> StartRecord:
    """Pre-check Δ^iter (`diffs` by role, `reasons` why each) onto the release `base`, probe the starts, and
    say which one to fine-tune from and why."""
    record = StartRecord(diffs=reasons, diff_ids=diffs, chosen=PLAIN, why="")
    if not diffs:
        why = "nothing to carry over: the track's first release is fine-tuned plain"
        return record.model_copy(update={"why": why})
    registry = where.registry()
    with ExitStack() as stack:
        opened = {
            role: stack.enter_context(streamed_diff(registry, ref=ref, scratch=work / "diffs" / role))
            for role, ref in diffs.items()
        }
        folder, reader = opened["iterative"]
        check = precheck(previous_base=previous, base=base, diff=folder, reader=reader)
        if check.lineage_broken:
            why = f"the pre-check says the lineage broke: {check.reason}"
            return record.model_copy(update={"precheck": check, "why": why})
        starts = make_starts(
            base=base,
            diffs={role: folder for role, (folder, _) in opened.items()},
            readers={role: reader for role, (_, reader) in opened.items()},
            alphas=spec.recycle.probe.alphas,
            out=work / "starts",
            overwrite=True,
        )
    result = score_starts(
        starts=starts,
        probe=spec.recycle.probe,
        recipe=spec.finetune.recipe,
        data=spec.finetune.data,
        work=work / "probe",
        suite=spec.recycle.probe_suite,
    )
    _keep_only(result.chosen, starts=work / "starts", probe=work / "probe")
    return record.model_copy(update={"precheck": check, "probe": result, "chosen": result.chosen, "why": _why(result)})


def _diffs(where: Workspace, *, release_id: int, spec: TrackSpec) -> tuple[dict[str, str], dict[str, str], Path]:
    """The Δs to try by role (one entry when Δ^iter is Δ^source), why each, and the release Δ^iter was made on."""
    with session_scope(where.registry().engine) as session:
        release = rows.get_release(session, release_id=release_id)
        found = {
            role: runs.carry(session, release=release, mode=mode, rule=spec.recycle.carry, channel=spec.channel)
            for role, mode in ROLES.items()
        }
        if found["iterative"].diff is None:
            return {}, {role: carry.reason for role, carry in found.items()}, Path()
        ids = {role: rows.public_id(carry.diff) for role, carry in found.items() if carry.diff is not None}
        if ids.get("source") == ids["iterative"]:
            del ids["source"]
        made_on = found["iterative"].diff.base_release_id
        previous = rows.get_release(session, release_id=made_on) if made_on is not None else None
        ref = None if previous is None else release_ref(previous)
        reasons = {role: found[role].reason for role in ids}
    if ref is None:
        return ids, reasons, Path()
    return ids, reasons, download(release=ref)  # a local release is its own folder


def _keep_only(chosen: str, *, starts: Path, probe: Path) -> None:
    """Free the scratch disk the other starts and the probe's models hold (a full model each)."""
    for folder in [*(p for p in starts.iterdir() if p.name != chosen), probe]:
        shutil.rmtree(folder, ignore_errors=True)


def _why(result: ProbeResult) -> str:
    check = result.versus_plain
    cost = (
        f"probe cost {result.probe_steps} steps ({result.steps_fraction:.0%} of the fine-tune) and "
        f"{result.evaluations} scorings"
    )
    if check is not None and not check.kept:
        return (
            f"{check.start} scored best by the {result.kind} probe, but only {check.diff:+.4f} above {PLAIN} "
            f"(lower bound {check.lower_bound:+.4f} at {check.confidence:.0%}, n = {check.n}): not surely better, "
            f"so the release is fine-tuned plain; {cost}"
        )
    best = result.scores[result.chosen].score
    sure = "" if check is None else f"; {check.diff:+.4f} above {PLAIN}, lower bound {check.lower_bound:+.4f}"
    starts = len(result.scores)
    return f"{result.chosen} scored best by the {result.kind} probe ({best:.4f}{sure}) of {starts} starts; {cost}"


def _choice(record: StartRecord, *, work: Path, base: Path) -> StartChoice:
    start = record.start
    if start.role is None:
        return StartChoice(base, None, "auto: the bare release (plain fine-tuning)", RecycleMode.NONE, 0.0, record)
    return StartChoice(
        work / "starts" / start.name,
        record.diff_ids[start.role],
        f"auto: {record.diffs[start.role]}, at α = {start.alpha:g}",
        ROLES[start.role],
        start.alpha,
        record,
    )


def start_table(record: StartRecord) -> str:
    """The choice as markdown: the pre-check's figures by layer type, then each start's probe score."""
    lines = [f"# auto: {record.chosen}", "", record.why, ""]
    check = record.precheck
    if check is not None:
        lines += [
            "| layer type | tensors | ‖M_i − M_{i−1}‖ / ‖M_{i−1}‖ | ‖M_i − M_{i−1}‖ / ‖Δ‖ | cos(Δ, M_i − M_{i−1}) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, shift in [("all", check.overall), *sorted(check.groups.items())]:
            lines.append(
                f"| {name} | {shift.tensors} | {shift.base_shift:.4f} | {shift.shift_to_diff:.4f} "
                f"| {shift.cosine:+.4f} |"
            )
        lines += ["", f"Lineage broken above {check.threshold:g}: {check.reason}", ""]
    probe = record.probe
    if probe is not None:
        lines += [f"| start | {probe.kind} score | rounds |", "| --- | --- | --- |"]
        for name, score in probe.scores.items():
            mark = " (chosen)" if name == record.chosen else ""
            lines.append(f"| {name}{mark} | {score.score:.4f} | {score.rounds} |")
        if probe.versus_plain is not None:
            lines += ["", describe_check(probe.versus_plain)]
    return "\n".join(lines)
