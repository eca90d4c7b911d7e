"""Registered tracks: the spec the registry holds for a track, validated against today's schema
(`tasks.track`)."""

from __future__ import annotations

from pathlib import Path

from ..storage import Registry
from ..storage import registry as rows
from ..storage.db import session_scope
from ..storage.models import Track
from ..tasks.track import TrackSpec, parse_track


def spec_of(track: Track) -> TrackSpec:
    """The validated spec of a registered track.

    Raises:
        TrackError: its stored spec no longer validates (add the track file again).
    """
    return parse_track(track.spec, base_dir=Path("/"), origin=f"track {track.name} in the registry")


def load_spec(registry: Registry, *, track: str) -> TrackSpec:
    """The validated spec of the registered track `track`.

    Raises:
        NotFoundError: no such track.
        TrackError: its stored spec no longer validates (add the track file again).
    """
    with session_scope(registry.engine) as session:
        return spec_of(rows.get_track(session, name=track))
