"""`graft track ...`: declare tracks, inspect them, and run their watcher once."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .console import JsonOption, err, open_registry, say, say_json, settings, track_flows, user_errors
from .plan_cli import Model, check_track

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from ..storage.status import ReleaseRow, TrackStatus

track_app = typer.Typer(help="Tracks: continuous-development lines declared in YAML.", no_args_is_help=True)


@track_app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="A track YAML file (see deployments/tracks/).")],
    model: Model = None,
) -> None:
    """Validate a track file and its data files, check that its fine-tune fits the pool's GPUs (see `graft plan`),
    and register it. Adding a changed file again adds a spec version; candidates keep the version they were
    made with (`graft registry show CANDIDATE --recipe`)."""
    from ..storage import registry as rows
    from ..storage.db import session_scope
    from ..tasks.track import check_files, load_track, spec_digest

    with user_errors():
        spec = load_track(file)
        check_files(spec)
        check_track(spec, model=model)
        with session_scope(open_registry().engine) as session:
            known = {t.name: t for t in rows.list_tracks(session)}
            before = None if spec.name not in known else rows.newest_spec(session, track=known[spec.name])
            track, new = rows.save_track(
                session, name=spec.name, spec=spec.model_dump(mode="json"), digest=spec_digest(spec)
            )
            version = rows.newest_spec(session, track=track)
            assert version is not None  # save_track made one
    what = f"track {spec.name} ({spec.source.kind} releases, {spec.recycle.mode} recycling)"
    if new:
        say(f"added {what}, spec version 1")
    elif before is not None and before.version == version.version:
        say(f"{what} unchanged, spec version {version.version}")
    else:
        say(f"updated {what}: spec version {version.version} (candidates made before keep theirs)")


@track_app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List the registered tracks.

    --json: an array with an object per track: track, source (its kind), mode, channel, and error (why its
    stored spec no longer validates; then the other fields are null).
    """
    from ..errors import TrackError
    from ..operations.tracks import spec_of
    from ..storage import registry as rows
    from ..storage.db import session_scope

    found: list[dict[str, str | None]] = []
    with user_errors(), session_scope(open_registry().engine) as session:
        for track in rows.list_tracks(session):
            try:
                spec = spec_of(track)
            except TrackError as e:
                found.append({"track": track.name, "source": None, "mode": None, "channel": None, "error": str(e)})
                continue
            kind, mode = str(spec.source.kind), str(spec.recycle.mode)
            found.append({"track": track.name, "source": kind, "mode": mode, "channel": spec.channel, "error": None})
    if as_json:
        say_json(found)
        return
    if found:
        say(f"{'track':<24} {'source':<10} {'mode':<10} channel")
    for row in found:
        if row["error"] is not None:
            say(f"{row['track']:<24} invalid spec: {row['error']}")
        else:
            say(f"{row['track']:<24} {row['source']:<10} {row['mode']:<10} {row['channel']}")
    if not found:
        say("no tracks yet: `graft track add FILE`")


@track_app.command("show")
def show(name: Annotated[str, typer.Argument(help="The track's name.")], as_json: JsonOption = False) -> None:
    """Show a track's spec, its champion, the decisions on its releases' candidates (with every reason), and
    its releases in the source's order with their states.

    --json: an object: track, spec, channel, champion (the candidate, as `graft registry show --json` gives
    it, or null) and releases (the rows of `graft track status --json`).
    """
    from ..operations.settings import Workspace
    from ..operations.tracks import load_spec
    from ..storage import plain, releases, runs, status
    from ..storage import registry as rows
    from ..storage.db import session_scope
    from ..tasks.track import spec_yaml

    with user_errors():
        registry = open_registry()
        spec = load_spec(registry, track=name)
        policy = Workspace.from_settings(settings()).retry_policy()
        with session_scope(registry.engine) as session:
            track = rows.get_track(session, name=name)
            champion = runs.champion(session, track=track, channel=spec.channel)
            holder = "none yet" if champion is None else f"{rows.public_id(champion)} ({champion.model_uri})"
            held = None if champion is None else plain.shown(session, row=champion)
            found = status.track_status(session, track=track, channel=spec.channel, primary=spec.gate.metrics[0])
            lines = [
                f"  {releases.label(r)}: {releases.describe(releases.status(session, release=r), policy=policy)}"
                for r in releases.in_order(session, track=track)
            ]
    if as_json:
        data = {"track": name, "spec": spec.model_dump(mode="json"), "channel": spec.channel, "champion": held}
        say_json({**data, "releases": [asdict(row) for row in found.releases]})
        return
    say(spec_yaml(spec).rstrip())
    say(f"champion on {spec.channel}: {holder}")
    decided = [row for row in found.releases if row.decision is not None]
    if decided:
        say("decisions on the releases' candidates:")
    for row in decided:
        now = "" if row.reign_by_another is None else f"; the champion now, by {row.reign_by_another}"
        say(f"  {row.label}: {row.candidate}, {row.decision} by {row.decided_by}{now}")
        for reason in row.reasons:
            say(f"    {reason}")
    say("releases, in the source's order:" if lines else "releases: none yet (`graft track watch` looks)")
    for line in lines:
        say(line)


@track_app.command("status")
def status_(name: Annotated[str, typer.Argument(help="The track's name.")], as_json: JsonOption = False) -> None:
    """A track at a glance: one row per release, in the source's order, with its state, the gate's primary
    metric on its bare base, on base + Δ (transferred) and on its candidate, the decision on that candidate
    with the reason that decided it (the first rule that failed, else the last), and * on the champion's row
    (with how it came to be champion, when another decision made it so).

    --json: an object: track, channel, metric (the primary metric's name), champion (a candidate id, or
    null) and releases, one object per release: release, label, ref, revision, state, detail, attempts,
    retry_at, candidate, scores (base, transferred, candidate), decision, decided_by, reasons, reason,
    champion, reign (how it came to be champion), waiting (the candidate waits for a person's approval).
    """
    from ..operations.tracks import load_spec
    from ..storage import registry as rows
    from ..storage import status
    from ..storage.db import session_scope

    with user_errors():
        registry = open_registry()
        spec = load_spec(registry, track=name)
        with session_scope(registry.engine) as session:
            track = rows.get_track(session, name=name)
            found = status.track_status(session, track=track, channel=spec.channel, primary=spec.gate.metrics[0])
    if as_json:
        say_json(asdict(found))
        return
    if not found.releases:
        say(f"track {name} has no releases yet (`graft track watch {name}` looks)")
        return
    say(_status_title(found))
    for line in _status_table(found.releases):
        say(line)


def _status_title(found: TrackStatus) -> str:
    """The line above a status table: the metric its scores are of, and where the champion is."""
    if found.champion is None:
        holder = f"no champion on {found.channel} yet"
    elif any(row.champion for row in found.releases):
        holder = f"* marks the champion on {found.channel}, {found.champion}"
    else:
        holder = f"the champion on {found.channel} is {found.champion}"
    return f"track {found.track}: scores of {found.metric} (— where not scored); {holder}"


def _status_table(rows: list[ReleaseRow]) -> list[str]:
    """The status rows as an aligned table: text columns to the left, scores (4 decimals) to the right."""
    header = ("release", "sha", "state", "base", "transferred", "candidate", "decision")
    scores = range(3, 6)
    cells = [
        (
            row.label,
            row.revision[:12],
            str(row.state),
            *(_score(v) for v in (row.scores.base, row.scores.transferred, row.scores.candidate)),
            _decided(row),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header) - 1)]

    def line(marker: str, values: tuple[str, ...]) -> str:
        padded = [
            v.rjust(w) if i in scores else v.ljust(w) for i, (v, w) in enumerate(zip(values[:-1], widths, strict=True))
        ]
        return f"{marker} " + "  ".join([*padded, values[-1]])

    return [line(" ", header), *(line("*" if row.champion else " ", c) for row, c in zip(rows, cells, strict=True))]


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


@track_app.command("watch")
def watch(name: Annotated[str, typer.Argument(help="The track's name.")]) -> None:
    """Look for new releases once and run Algorithm 1 on each, here, in release order.

    The runs go to the Prefect server PREFECT_API_URL names, else to the data dir's own (the one `graft serve`
    and `graft ui` run), started for the command when none runs.
    """
    from ..flows.watch import watch_releases
    from ..terms import Dispatch

    with track_flows(name):
        done = watch_releases(track=name, dispatch=Dispatch.INLINE, data_dir=settings().data_dir)
    say(f"track {name}: {len(done.new)} new release(s), {len(done.started)} run")
    _say_decisions(done.started)
    if done.failed:
        err.print(f"[bold red]error:[/] track {name}: {done.failed}", highlight=False, soft_wrap=True)
    if done.waiting:
        say(f"track {name}: waiting: {done.waiting}")
    if done.failed:
        raise typer.Exit(1)


def _decided(row: ReleaseRow) -> str:
    """A row's decision column: the decision on its candidate and the reason that decided it, or that a person's
    approval waits; and, on the champion's row, how it came to be champion when another decision made it so."""
    if row.waiting:
        return f"waiting for approval (graft approve {row.candidate})"
    if row.decision is None:
        return "—"
    said = f"{row.decision}" + (f" ({row.reason})" if row.reason else "")
    if row.reign_by_another is not None:
        said += f"; champion now by {row.reign_by_another}"
    return said


def _say_decisions(release_ids: list[int]) -> None:
    """One line per release that was run and gated: its decision and the reason that decided it
    (`storage.status.deciding_reason`)."""
    from ..storage import registry as rows
    from ..storage import releases, runs
    from ..storage.db import session_scope
    from ..storage.status import deciding_reason

    with user_errors(), session_scope(open_registry().engine) as session:
        for release_id in release_ids:
            release = rows.get_release(session, release_id=release_id)
            decided = runs.release_decision(session, release=release)
            if decided is not None:
                say(f"  {releases.label(release)}: {decided.decision} ({deciding_reason(decided.reasons)})")


@track_app.command("retry")
def retry(
    name: Annotated[str, typer.Argument(help="The track's name.")],
    release: Annotated[str, typer.Argument(help="The release: its id (release-3), ref or folder, or sha.")],
) -> None:
    """Let a failed release run again at the next watcher pass (whatever its retries so far)."""
    from ..storage import registry as rows
    from ..storage import releases
    from ..storage.db import session_scope

    with user_errors(), session_scope(open_registry().engine) as session:
        found = releases.by_name(session, track=rows.get_track(session, name=name), name=release)
        releases.retry(session, release=found)
        label = releases.label(found)
    say(f"{label} runs again at the track's next watcher pass (`graft track watch {name}` runs it now)")
