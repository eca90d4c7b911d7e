"""`graft ui`, `graft serve` and `graft worker`: the Prefect side of Graftwork, run from the command line."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from ..operations.settings import GraftSettings
from .console import DataDir, say, settings, user_errors

Host = Annotated[
    str | None,
    typer.Option("--host", help="Address the Prefect server listens on (default GRAFT_PREFECT_HOST, 127.0.0.1)."),
]
Port = Annotated[
    int | None, typer.Option("--port", help="Port of the Prefect server and its UI (default GRAFT_PREFECT_PORT, 4200).")
]


def ui(data_dir: DataDir = None, host: Host = None, port: Port = None) -> None:
    """The Prefect server and its UI on the data dir's Prefect database, where its runs are: started here (Ctrl-C
    stops it), or, when it already runs (`graft serve`), where to open it."""
    from .local_server import prefect_service, wait
    from .prefect_api import check, endpoint

    chosen = settings() if data_dir is None else GraftSettings(data_dir=data_dir)
    with user_errors():
        found = endpoint(chosen)
        if found.explicit:
            say(f"PREFECT_API_URL names the Prefect server; its UI is at {found.ui_url}")
            return
        if check(found):
            say(f"this data dir's Prefect server runs already: its UI is at {found.ui_url}")
            return
        with prefect_service(settings=chosen, say=say, host=host, port=port) as target:
            say(f"Prefect UI on {target.ui_url} (database {target.home}/prefect.db); Ctrl-C stops it")
            wait(target)


def serve(
    watch_minutes: Annotated[float, typer.Option("--watch-minutes", help="How often every track is watched.")] = 60,
    recycle_pool: Annotated[
        str | None, typer.Option("--recycle-pool", help="Run recycle runs on this work pool's workers, not here.")
    ] = None,
    host: Host = None,
    port: Port = None,
) -> None:
    """Serve every deployment (the watchers, recycle, backfill, backport, one-off flows) from this process.

    Every registered track is watched every --watch-minutes, a track added later too. Without PREFECT_API_URL
    the deployments live on the data dir's own Prefect server (with its UI, scheduler and event services): the
    one running already, else one started here and stopped with the command.
    """
    from ..storage import registry as rows
    from ..storage.db import session_scope
    from .console import open_registry
    from .local_server import prefect_service
    from .serve import serve_all

    with user_errors(), session_scope(open_registry().engine) as session:
        tracks = [t.name for t in rows.list_tracks(session)]
    where = "here" if recycle_pool is None else f"on the {recycle_pool} pool's workers"
    now = ", ".join(tracks) or "none yet"
    chosen = settings()
    with user_errors(), prefect_service(settings=chosen, say=say, host=host, port=port) as target:
        say(f"watching every track every {watch_minutes:g} min (now: {now}); recycle runs {where}")
        say(f"Prefect UI: {target.ui_url}/deployments (API {target.api_url}); Ctrl-C stops")
        serve_all(
            watch_every=timedelta(minutes=watch_minutes),
            data_dir=chosen.data_dir,
            recycle_pool=recycle_pool,
            say=say,
        )


def worker(
    pool: Annotated[str, typer.Option("--pool", help="The work pool: cpu (watchers, gating) or gpu (recycle runs).")],
) -> None:
    """Start a Prefect worker for a pool on the Prefect server the other commands use (PREFECT_API_URL, else the
    data dir's, which must be running: `graft serve` or `graft ui`), creating the pool first when it is missing.

    The gpu pool gets a concurrency limit of one run per visible GPU.
    """
    import asyncio

    import torch

    from .prefect_api import connected, endpoint, environment, require
    from .serve import POOLS, ensure_pool, start_worker

    if pool not in POOLS:
        raise typer.BadParameter(f"{pool!r} is not a Graftwork pool; use one of {', '.join(POOLS)}.")
    with user_errors():
        target = endpoint(settings())
        require(target)
    limit = max(torch.cuda.device_count(), 1) if pool == "gpu" else None
    with connected(target):
        created = asyncio.run(ensure_pool(name=pool, concurrency=limit))
    if created:
        say(f"created work pool {pool}" + (f" (concurrency {limit})" if limit else ""))
    say(f"a worker for the {pool} pool of the Prefect server at {target.api_url}")
    start_worker(pool=pool, env=environment(target, settings=settings()))
