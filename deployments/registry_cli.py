"""`graft registry ...` and `graft db ...`: the versioned registry from the command line."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..fs import megabytes
from ..terms import ArtifactKind
from .console import JsonOption, open_registry, say, say_json, settings, user_errors

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from sqlalchemy.orm import Session

    from ..storage import Registry
    from ..storage.models import Candidate, Diff, FinetuneRun
    from ..storage.registry import Artifact

registry_app = typer.Typer(help="The registry of releases, diffs, candidates and promotions.", no_args_is_help=True)
db_app = typer.Typer(help="The registry's database schema.", no_args_is_help=True)

TrackOption = Annotated[str | None, typer.Option("--track", "-t", help="Only this track.")]


def _open() -> Registry:
    return open_registry()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the registry database to the newest schema (commands that need it do this themselves)."""
    from ..storage import db

    with user_errors():
        engine = db.make_engine(settings().registry_database_url)
        before = db.current_revision(engine)
        db.upgrade(engine)
        after = db.current_revision(engine)
    say(f"database {engine.url.render_as_string(hide_password=True)}: revision {before or 'empty'} → {after}")


@registry_app.command("list")
def list_(
    track: TrackOption = None,
    kind: Annotated[
        ArtifactKind | None, typer.Option("--kind", "-k", help="Only this kind of artifact.", case_sensitive=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List artifacts, oldest first.

    --json: an array with an object per artifact: public_id (`diff-3`), artifact (its kind), track (its
    name), then the columns of its table.
    """
    from ..storage import plain
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(_open().engine) as session:
        scope = None if track is None else rows.get_track(session, name=track)
        found = rows.list_artifacts(session, track=scope, kind=kind)
        if as_json:
            say_json([plain.artifact(row) for row in found])
            return
        for row in found:
            say(f"{rows.public_id(row):<14} {row.created_at:%Y-%m-%d %H:%M}  {row.track.name}  {_summary(row)}")
    if not found:
        say("nothing registered yet")


@registry_app.command("show")
def show(
    artifact: Annotated[str, typer.Argument(metavar="ID", help="An id from `graft registry list`.")],
    as_json: JsonOption = False,
    recipe: Annotated[
        bool, typer.Option("--recipe", help="For a candidate: what reproduces it (spec version, inputs, recipe).")
    ] = False,
) -> None:
    """Show one artifact: provenance, sizes, hashes, eval results, the decisions on a candidate with their
    reasons, and lineage.

    --json: an object: what `graft registry list --json` gives for the artifact, and for a diff its files
    and lineage (ids, nearest first), for a candidate its finetune_run, eval_results and decisions.
    """
    from ..storage import plain
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(_open().engine) as session:
        row = rows.get(session, ref=artifact)
        if recipe:
            for line in _recipe(session, row):
                say(line)
            return
        if as_json:
            say_json(plain.shown(session, row=row))
            return
        say(f"{rows.public_id(row)} on track {row.track.name}, recorded {row.created_at:%Y-%m-%d %H:%M:%S}")
        for line in _details(session, row):
            say(f"  {line}")


@registry_app.command("lineage")
def lineage(
    track: Annotated[str, typer.Argument(help="The track whose Δ chain to show.")], as_json: JsonOption = False
) -> None:
    """Show a track's chain of diff vectors, release by release.

    --json: an array with an object per diff, in the order they were registered, as `graft registry list
    --json` gives it (parent_id: the diff it follows).
    """
    from ..storage import plain
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(_open().engine) as session:
        diffs = rows.diffs_of(session, track=rows.get_track(session, name=track))
        if as_json:
            say_json([plain.artifact(diff) for diff in diffs])
            return
        for diff in diffs:
            parent = f"diff-{diff.parent_id}" if diff.parent_id else "none (first)"
            say(f"{rows.public_id(diff):<10} base {_ref(diff.base)}  parent {parent}  {_sizes(diff)}")
    if not diffs:
        say(f"track {track} has no diffs yet")


@registry_app.command("export")
def export(
    diff: Annotated[str, typer.Argument(metavar="DIFF_ID", help="A diff id (diff-N or N).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not exist unless --overwrite).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write a registered diff as a plain diff folder, usable by `graft apply`."""
    from ..operations import diffs as ops

    with user_errors():
        path = ops.export_diff(_open(), ref=diff, out=out_dir, overwrite=overwrite)
    say(f"exported {diff} to {path}")


@registry_app.command("import")
def import_(
    diff_dir: Annotated[Path, typer.Argument(metavar="DIFF_DIR", help="A diff folder made by `graft diff`.")],
    track: Annotated[str, typer.Option("--track", "-t", help="The registered track to record it on.")],
    parent: Annotated[str | None, typer.Option("--parent", help="The diff it follows in the Δ chain.")] = None,
) -> None:
    """Register a diff made elsewhere: compress its files into the blob store and record it."""
    from ..operations import diffs as ops

    with user_errors():
        done = ops.register_diff(_open(), diff_dir=diff_dir, track=track, parent=parent, say=say)
    verb = "registered" if done.new else "already registered as"
    say(
        f"{verb} {done.id} on track {track}: {megabytes(done.raw_bytes)} stored as {megabytes(done.stored_bytes)} "
        f"({done.raw_bytes / max(done.stored_bytes, 1):.2f}×) in {done.seconds:.1f} s"
    )


@registry_app.command("verify")
def verify() -> None:
    """Re-hash every blob that a row points to; exit 1 when any is missing or corrupt."""
    from ..operations import diffs as ops

    with user_errors():
        report = ops.verify(_open())
    for label, found in (("missing", report.missing), ("corrupt", report.corrupt)):
        for sha, owners in found.items():
            say(f"{label}: blob {sha} of {', '.join(owners)}")
    say(f"checked {report.checked} blob(s): {len(report.missing)} missing, {len(report.corrupt)} corrupt")
    if not report.ok:
        raise typer.Exit(1)


@registry_app.command("gc")
def gc(
    grace_hours: Annotated[
        float, typer.Option("--grace-hours", help="Keep unreferenced blobs younger than this (writes in flight).")
    ] = 24.0,
) -> None:
    """Remove blobs no row points to (and writers' leftovers) older than the grace period."""
    from ..operations import diffs as ops

    with user_errors():
        report = ops.gc(_open(), grace=timedelta(hours=grace_hours))
    say(f"removed {report.blobs} orphan blob(s) and {report.temporaries} temporary file(s), {megabytes(report.bytes)}")


def _summary(row: Artifact) -> str:
    from ..storage.models import Candidate, Diff, Release

    if isinstance(row, Release):
        return f"{row.repo_id}@{row.revision[:12]}" + (f" ({row.ref})" if row.ref else "")
    if isinstance(row, Diff):
        return f"Δ = {_ref(row.finetuned)} − {_ref(row.base)}, {row.tensor_count} tensors, {_sizes(row)}"
    if isinstance(row, Candidate):
        return f"{row.mode or row.kind} α={row.alpha:g} for release-{row.release_id}: {row.model_uri}"
    return f"{row.decision} on {row.channel}: candidate-{row.to_candidate_id} ({'; '.join(row.reasons)})"


def _details(session: Session, row: Artifact) -> list[str]:
    from ..storage import evals
    from ..storage import registry as rows
    from ..storage.models import Candidate, Diff, Promotion

    lines = [_summary(row)]
    if isinstance(row, Diff):
        lines += [f"fine-tuned: {_provenance(row.finetuned)}", f"base: {_provenance(row.base)}"]
        lines.append(f"codec {row.codec}, key {row.key}")
        lines += [
            f"file {f.path}: {megabytes(f.raw_bytes)} sha256 {f.raw_sha256} "
            f"→ blob {f.blob_sha256} ({megabytes(f.stored_bytes)})"
            for f in row.files
        ]
        chain = rows.ancestors(session, diff=row)
        lines.append("lineage: " + " ← ".join([rows.public_id(row), *(rows.public_id(d) for d in chain)]))
    if isinstance(row, Candidate):
        lines.append(f"{row.kind}, started from {row.carry_reason or 'an unrecorded Δ (made before carry reasons)'}")
        if row.start_choice is not None:
            from ..tasks.starts.choice import StartRecord
            from ..tasks.starts.describe import describe

            lines += describe(StartRecord.model_validate(row.start_choice))
        if row.finetune_run is not None:
            lines.append(_finetune_run(row.finetune_run))
        lines += [
            f"eval {r.task} {r.metric} [{r.filter}] = {r.value:.4f} ± "
            f"{'n/a' if r.stderr is None else f'{r.stderr:.4f}'} (n={r.n}, lm-eval {r.harness_version})"
            for r in evals.eval_results(session, candidate=row)
        ]
        lines += _decisions(session, row) or ["no decision on it yet"]
    if isinstance(row, Promotion):
        before = "no champion before" if row.from_candidate_id is None else f"from candidate-{row.from_candidate_id}"
        lines.append(f"{before}, by {row.actor}")
    return lines


def _recipe(session: Session, row: Artifact) -> list[str]:
    """What reproduces a candidate: the track's spec version it was made with (as the YAML `graft track add` takes,
    defaults left out), its base release, the Δ it started from and the fine-tuning data's hash.

    Raises:
        NotFoundError: `row` is not a candidate.
    """
    import yaml
    from pydantic import ValidationError

    from ..errors import NotFoundError
    from ..storage import registry as rows
    from ..storage import releases
    from ..storage.models import Candidate
    from ..tasks.track import TrackSpec, spec_yaml

    if not isinstance(row, Candidate):
        raise NotFoundError(
            f"--recipe shows what reproduces a candidate, and {rows.public_id(row)} is not one; "
            "pass a candidate's id (`graft registry list --kind candidate`).",
            ref=rows.public_id(row),
        )
    base = row.release
    lines = [f"{rows.public_id(row)} on track {row.track.name}: what reproduces it"]
    lines.append(f"  base: {releases.label(base)}: {base.repo_id}@{base.revision} (content {base.content_key or '?'})")
    source = None if row.source_diff_id is None else rows.by_id(session, ArtifactKind.DIFF, row.source_diff_id)
    start = "the bare base" if source is None else f"base + {row.alpha:g}·{rows.public_id(source)}"
    lines.append(f"  start: {start} ({row.carry_reason or f'{row.mode or row.kind}; why was not recorded'})")
    run = row.finetune_run
    if run is not None:
        lines.append(f"  fine-tune: recipe {json.dumps(run.recipe)}; data sha256 {run.data_sha256 or '?'}")
    if row.spec is None:
        lines.append("  spec: not recorded (the candidate was made before Graftwork versioned track specs)")
        return lines
    lines.append(f"  spec version {row.spec.version} (sha256 {row.spec.sha256}), as `graft track add` takes it:")
    try:
        written = spec_yaml(TrackSpec.model_validate(row.spec.spec))
    except ValidationError:  # a version today's schema no longer reads: as it was stored
        written = yaml.safe_dump(row.spec.spec, sort_keys=False)
    lines += [f"    {line}" for line in written.splitlines()]
    return lines


def _decisions(session: Session, candidate: Candidate) -> list[str]:
    """Each decision that named the candidate, oldest first: what, where and by whom, then every reason."""
    from ..storage import registry as rows
    from ..storage.status import decisions_on

    lines = []
    for decision in decisions_on(session, candidate=candidate):
        lines.append(f"{rows.public_id(decision)}: {decision.decision} on {decision.channel} by {decision.actor}")
        lines += [f"  {reason}" for reason in decision.reasons]
    return lines


def _finetune_run(run: FinetuneRun) -> str:
    loss = "" if run.final_loss is None else f", final loss {run.final_loss:.4f}"
    took = (run.finished_at - run.started_at).total_seconds()
    return (
        f"fine-tune run {run.id}: {run.steps} steps in {took:.1f} s on {run.device} × {run.processes}, "
        f"{run.tokens} tokens ({run.tokens_per_second:.0f} tokens/s){loss}; recipe {json.dumps(run.recipe)}"
    )


def _provenance(ref: dict[str, object]) -> str:
    revision = f"@{ref['revision']}" if ref.get("revision") else ""
    return f"{_ref(ref)}{revision}, content sha256 {ref.get('content_hash', '?')}"


def _ref(ref: dict[str, object]) -> str:
    return str(ref.get("repo_id") or ref.get("path") or "?")


def _sizes(diff: Diff) -> str:
    return f"{megabytes(diff.raw_bytes)} stored as {megabytes(diff.stored_bytes)}"
