"""`graft ui`, `graft serve` and `graft worker`: the Prefect side of Graftwork, run from the command line."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from ..flows.settings import GraftSettings
from .console import DataDir, say, user_errors


def ui(
    data_dir: DataDir = None,
    port: Annotated[int, typer.Option("--port", help="Port of the Prefect UI.")] = 4200,
) -> None:
    """Start the Prefect server (and its UI) on the data dir's Prefect database, where the demo's runs are."""
    import sys

    home = (data_dir or GraftSettings().data_dir).resolve() / "prefect"
    with user_errors():
        _make_home(home)
    say(f"Prefect UI on http://127.0.0.1:{port} (database {home / 'prefect.db'}); Ctrl-C stops it")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    command = [sys.executable, "-m", "prefect", "server", "start"]
    # The server replaces this process, so that stopping `graft ui` stops the server itself.
    os.execve(sys.executable, command, env)


def _make_home(home: Path) -> None:
    """Create the UI server's Prefect home (a new data dir has none: its SQLite database could not open).

    Raises:
        LocalPrefectError: it cannot be created.
    """
    from ..errors import LocalPrefectError

    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalPrefectError(
            f"cannot create {home} for the Prefect server: {e.strerror}; choose another --data-dir.", path=home
        ) from None


def serve(
    watch_minutes: Annotated[float, typer.Option("--watch-minutes", help="How often every track is watched.")] = 60,
    recycle_pool: Annotated[
        str | None, typer.Option("--recycle-pool", help="Run recycle runs on this work pool's workers, not here.")
    ] = None,
) -> None:
    """Serve every deployment (the watchers, recycle, backfill, backport, one-off flows) from this process.

    Every registered track is watched every --watch-minutes, a track added later too. Without PREFECT_API_URL
    the deployments live on the data dir's own Prefect server (the database `graft ui` serves), started for the
    command and stopped with it.
    """
    from ..flows.local_server import local_prefect
    from ..storage import registry as rows
    from ..storage.db import session_scope
    from .console import open_registry
    from .serve import serve_all

    with user_errors(), session_scope(open_registry().engine) as session:
        tracks = [t.name for t in rows.list_tracks(session)]
    where = "here" if recycle_pool is None else f"on the {recycle_pool} pool's workers"
    now = ", ".join(tracks) or "none yet"
    settings = GraftSettings()
    home = settings.data_dir / "prefect"
    with user_errors(), local_prefect(home=home, startup_timeout=settings.prefect_startup_timeout, say=say):
        say(f"watching every track every {watch_minutes:g} min (now: {now}); recycle runs {where}")
        serve_all(watch_every=timedelta(minutes=watch_minutes), recycle_pool=recycle_pool)


def worker(
    pool: Annotated[str, typer.Option("--pool", help="The work pool: cpu (watchers, gating) or gpu (recycle runs).")],
) -> None:
    """Start a Prefect worker for a pool, creating the pool first when it is missing.

    The gpu pool gets a concurrency limit of one run per visible GPU.
    """
    import asyncio

    import torch

    from .serve import POOLS, ensure_pool, start_worker

    if pool not in POOLS:
        raise typer.BadParameter(f"{pool!r} is not a Graftwork pool; use one of {', '.join(POOLS)}.")
    limit = max(torch.cuda.device_count(), 1) if pool == "gpu" else None
    if asyncio.run(ensure_pool(name=pool, concurrency=limit)):
        say(f"created work pool {pool}" + (f" (concurrency {limit})" if limit else ""))
    start_worker(pool=pool)
