"""`graft registry ...` and `graft db ...`: the versioned registry from the command line."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..flows.settings import GraftSettings
from ..fs import megabytes
from ..terms import ArtifactKind
from .console import open_registry, say, user_errors

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from sqlalchemy.orm import Session

    from ..storage import Registry
    from ..storage.models import Diff, FinetuneRun
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
        engine = db.make_engine(GraftSettings().registry_database_url)
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
) -> None:
    """List artifacts, oldest first."""
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(_open().engine) as session:
        scope = None if track is None else rows.get_track(session, name=track)
        found = rows.list_artifacts(session, track=scope, kind=kind)
        for row in found:
            say(f"{rows.public_id(row):<14} {row.created_at:%Y-%m-%d %H:%M}  {row.track.name}  {_summary(row)}")
    if not found:
        say("nothing registered yet")


@registry_app.command("show")
def show(artifact: Annotated[str, typer.Argument(metavar="ID", help="An id from `graft registry list`.")]) -> None:
    """Show one artifact: provenance, sizes, hashes, eval results and lineage."""
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(_open().engine) as session:
        row = rows.get(session, ref=artifact)
        say(f"{rows.public_id(row)} on track {row.track.name}, recorded {row.created_at:%Y-%m-%d %H:%M:%S}")
        for line in _details(session, row):
            say(f"  {line}")


@registry_app.command("lineage")
def lineage(track: Annotated[str, typer.Argument(help="The track whose Δ chain to show.")]) -> None:
    """Show a track's chain of diff vectors, release by release."""
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(_open().engine) as session:
        diffs = rows.diffs_of(session, track=rows.get_track(session, name=track))
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
    from ..flows import registry as ops

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
    from ..flows import registry as ops

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
    from ..flows import registry as ops

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
    from ..flows import registry as ops

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
        return f"{row.mode} α={row.alpha:g} for release-{row.release_id}: {row.model_uri}"
    return f"{row.decision} on {row.channel}: candidate-{row.to_candidate_id} ({'; '.join(row.reasons)})"


def _details(session: Session, row: Artifact) -> list[str]:
    from ..storage import registry as rows
    from ..storage import runs
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
        if row.finetune_run is not None:
            lines.append(_finetune_run(row.finetune_run))
        lines += [
            f"eval {r.task} {r.metric} [{r.filter}] = {r.value:.4f} ± "
            f"{'n/a' if r.stderr is None else f'{r.stderr:.4f}'} (n={r.n}, lm-eval {r.harness_version})"
            for r in runs.eval_results(session, candidate=row)
        ]
    if isinstance(row, Promotion):
        before = "no champion before" if row.from_candidate_id is None else f"from candidate-{row.from_candidate_id}"
        lines.append(f"{before}, by {row.actor}")
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
