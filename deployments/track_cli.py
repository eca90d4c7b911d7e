"""`graft track ...`: declare tracks, inspect them, and run their watcher once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .console import err, open_registry, say, track_flows, user_errors
from .plan_cli import Model, check_track

track_app = typer.Typer(help="Tracks: continuous-development lines declared in YAML.", no_args_is_help=True)


@track_app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="A track YAML file (see deployments/tracks/).")],
    model: Model = None,
) -> None:
    """Validate a track file and its data files, check that its fine-tune fits the pool's GPUs (see `graft plan`),
    and register it (again: its spec is replaced)."""
    from ..flows.tracks import check_files, load_track
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors():
        spec = load_track(file)
        check_files(spec)
        check_track(spec, model=model)
        with session_scope(open_registry().engine) as session:
            _, new = rows.save_track(session, name=spec.name, spec=spec.model_dump(mode="json"))
    verb = "added" if new else "updated"
    say(f"{verb} track {spec.name} ({spec.source.kind} releases, {spec.recycle.mode} recycling)")


@track_app.command("list")
def list_() -> None:
    """List the registered tracks."""
    from ..errors import TrackError
    from ..flows.tracks import spec_of
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors(), session_scope(open_registry().engine) as session:
        tracks = rows.list_tracks(session)
        if tracks:
            say(f"{'track':<24} {'source':<10} {'mode':<10} channel")
        for track in tracks:
            try:
                spec = spec_of(track)
            except TrackError as e:
                say(f"{track.name:<24} invalid spec: {e}")
                continue
            say(f"{track.name:<24} {spec.source.kind:<10} {spec.recycle.mode:<10} {spec.channel}")
    if not tracks:
        say("no tracks yet: `graft track add FILE`")


@track_app.command("show")
def show(name: Annotated[str, typer.Argument(help="The track's name.")]) -> None:
    """Show a track's spec and its champion."""
    from ..flows.settings import Workspace
    from ..flows.tracks import load_spec
    from ..storage import registry as rows
    from ..storage import releases, runs
    from ..storage.db import session_scope

    with user_errors():
        registry = open_registry()
        spec = load_spec(registry, track=name)
        policy = Workspace.from_settings().retry_policy()
        with session_scope(registry.engine) as session:
            track = rows.get_track(session, name=name)
            champion = runs.champion(session, track=track, channel=spec.channel)
            holder = "none yet" if champion is None else f"{rows.public_id(champion)} ({champion.model_uri})"
            lines = [
                f"  {releases.label(r)}: {releases.describe(releases.status(session, release=r), policy=policy)}"
                for r in releases.in_order(session, track=track)
            ]
    say(json.dumps(spec.model_dump(mode="json"), indent=2))
    say(f"champion on {spec.channel}: {holder}")
    say("releases, in the source's order:" if lines else "releases: none yet (`graft track watch` looks)")
    for line in lines:
        say(line)


@track_app.command("watch")
def watch(name: Annotated[str, typer.Argument(help="The track's name.")]) -> None:
    """Look for new releases once and run Algorithm 1 on each, here, in release order.

    The runs go to the Prefect server PREFECT_API_URL names, else to one started for the command on the
    data dir's own Prefect database (the one `graft ui` serves).
    """
    from ..flows.watch import watch_releases

    with track_flows(name):
        done = watch_releases(track=name, dispatch="inline")
    say(f"track {name}: {len(done.new)} new release(s), {len(done.started)} run")
    _say_decisions(done.started)
    if done.failed:
        err.print(f"[bold red]error:[/] track {name}: {done.failed}", highlight=False, soft_wrap=True)
    if done.waiting:
        say(f"track {name}: waiting: {done.waiting}")
    if done.failed:
        raise typer.Exit(1)


def _say_decisions(release_ids: list[int]) -> None:
    """One line per release that was run and gated: its decision and the gate's first reason."""
    from ..storage import registry as rows
    from ..storage import releases, runs
    from ..storage.db import session_scope

    with user_errors(), session_scope(open_registry().engine) as session:
        for release_id in release_ids:
            release = rows.get_release(session, release_id=release_id)
            decided = runs.release_decision(session, release=release)
            if decided is not None:
                say(f"  {releases.label(release)}: {decided.decision} ({decided.reasons[0]})")


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
