"""`graft track ...`: declare tracks, inspect them, and run their watcher once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .console import live_progress, open_registry, say, user_errors

track_app = typer.Typer(help="Tracks: continuous-development lines declared in YAML.", no_args_is_help=True)


@track_app.command("add")
def add(file: Annotated[Path, typer.Argument(help="A track YAML file (see deployments/tracks/).")]) -> None:
    """Validate a track file and register it (again: its spec is replaced)."""
    from ..flows.tracks import load_track
    from ..storage import registry as rows
    from ..storage.db import session_scope

    with user_errors():
        spec = load_track(file)
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
    from ..flows.tracks import load_spec
    from ..storage import registry as rows
    from ..storage import runs
    from ..storage.db import session_scope

    with user_errors():
        registry = open_registry()
        spec = load_spec(registry, track=name)
        with session_scope(registry.engine) as session:
            champion = runs.champion(session, track=rows.get_track(session, name=name), channel=spec.channel)
            holder = "none yet" if champion is None else f"{rows.public_id(champion)} ({champion.model_uri})"
    say(json.dumps(spec.model_dump(mode="json"), indent=2))
    say(f"champion on {spec.channel}: {holder}")


@track_app.command("watch")
def watch(name: Annotated[str, typer.Argument(help="The track's name.")]) -> None:
    """Look for new releases once and run Algorithm 1 on each, here, in release order.

    The runs go to the Prefect server PREFECT_API_URL names, else to one started for the command on the
    data dir's own Prefect database (the one `graft ui` serves).
    """
    from ..flows.local_server import local_prefect
    from ..flows.progress import listening
    from ..flows.settings import GraftSettings
    from ..flows.tracks import load_spec
    from ..flows.watch import watch_releases

    settings = GraftSettings()
    home, timeout = settings.data_dir / "prefect", settings.prefect_startup_timeout
    with user_errors():
        load_spec(open_registry(), track=name)  # an unknown track is refused before any server starts
    with (
        user_errors(),
        local_prefect(home=home, startup_timeout=timeout, say=say),
        live_progress() as listener,
        listening(listener),
    ):
        new = watch_releases(track=name, dispatch="inline")
    say(f"track {name}: {len(new)} new release(s) processed")
