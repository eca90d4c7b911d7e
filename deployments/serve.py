"""Serve every Graftwork deployment from one process (`graft serve`), and start pool workers
(`graft worker`).

`graft serve` is the embedded way to run Graftwork: one watcher deployment per registered track on a
schedule, plus the recycle, backfill and one-off deployments, all executed by this process. With
workers, `deployments/prefect.yaml` declares the same deployments on the `cpu` and `gpu` pools.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import NoReturn, cast

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.types.entrypoint import EntrypointType

from ..flows.oneoff import evaluate, promote, rollback, transfer
from ..flows.recycle import recycle_then_finetune, run_series
from ..flows.watch import watch_releases

POOLS = ("cpu", "gpu")


def build_deployments(*, tracks: list[str], watch_every: timedelta) -> list[RunnerDeployment]:
    """The deployments `graft serve` serves: a scheduled watcher per track, and the on-demand flows.

    Each names its flow by module (`graftwork.flows.recycle.recycle_then_finetune`), so that the run
    imports the installed package wherever it is started from. The recycle deployment runs one release
    at a time (concurrency limit 1: one GPU).
    """
    module = EntrypointType.MODULE_PATH
    deployments = [
        recycle_then_finetune.to_deployment(
            name="recycle-then-finetune", concurrency_limit=1, tags=["graftwork"], entrypoint_type=module
        ),
        run_series.to_deployment(name="run-series", tags=["graftwork"], entrypoint_type=module),
        transfer.to_deployment(name="transfer", tags=["graftwork"], entrypoint_type=module),
        evaluate.to_deployment(name="evaluate", tags=["graftwork"], entrypoint_type=module),
        promote.to_deployment(name="promote", tags=["graftwork"], entrypoint_type=module),
        rollback.to_deployment(name="rollback", tags=["graftwork"], entrypoint_type=module),
    ]
    deployments += [
        watch_releases.to_deployment(
            name=f"watch-{track}",
            interval=watch_every,
            parameters={"track": track, "dispatch": "deployment"},
            tags=["graftwork", f"track:{track}"],
            entrypoint_type=module,
        )
        for track in tracks
    ]
    return cast(list[RunnerDeployment], deployments)


def serve_all(*, tracks: list[str], watch_every: timedelta) -> None:
    """Serve every deployment from this process until interrupted."""
    serve(*build_deployments(tracks=tracks, watch_every=watch_every))


async def ensure_pool(*, name: str, concurrency: int | None) -> bool:
    """Create the process work pool `name` if it is missing; return whether it was created."""
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return False
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=concurrency))
            return True


def start_worker(*, pool: str) -> NoReturn:
    """Replace this process with a Prefect worker for `pool` (so that stopping it stops the worker)."""
    os.execv(sys.executable, [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool])
