"""Serve every Graftwork deployment from one process (`graft serve`), and start pool workers
(`graft worker`).

`graft serve` is the embedded way to run Graftwork: a scheduled watcher over every registered track, the
on-demand watcher pass, the recycle, backfill, backport and one-off deployments, all executed by this
process (or the recycle runs by a pool's workers, `--recycle-pool`). With workers only,
`deployments/prefect.yaml` declares the same deployments on the `cpu` and `gpu` pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, cast

import httpx
from prefect import Flow, deploy
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL
from prefect.types.entrypoint import EntrypointType

from ..errors import PrefectUnreachableError
from ..flows.backport import backport
from ..flows.oneoff import evaluate, promote, rollback, transfer
from ..flows.recycle import recycle_then_finetune, run_series
from ..flows.watch import watch_all_tracks, watch_releases
from ..fs import Say, as_ctrl_c

POOLS = ("cpu", "gpu")


def build_deployments(
    *, watch_every: timedelta, data_dir: Path, recycle_pool: str | None = None
) -> list[RunnerDeployment]:
    """The deployments `graft serve` serves: the watcher of every track (`watch-all-tracks`, on a
    schedule: it reads the registered tracks at each pass, so a track added later is watched too), one
    track's watcher pass on demand (`watch-releases`, what webhooks and finished runs start), the recycle
    run, backfill, backport and the one-off flows.

    Each names its flow by module (`graftwork.flows.recycle.recycle_then_finetune`), so that the run
    imports the installed package wherever it is started from. With `recycle_pool`, the recycle
    deployment is left out: `deploy_recycle` puts it on that work pool, for its workers to run.

    Their runs, run by this process, work on its data dir: each deployment's `data_dir` parameter says which.
    """
    parameters = {"data_dir": str(data_dir)}
    on_demand: list[Flow[..., Any]] = [run_series, backport, transfer, evaluate, promote, rollback]
    deployments = [_by_module(flow, name=flow.name, parameters=parameters) for flow in on_demand]
    if recycle_pool is None:
        deployments.append(recycle_deployment(parameters=parameters))
    deployments += [
        _by_module(watch_releases, name="watch-releases", parameters=parameters),
        _by_module(watch_all_tracks, name="watch-all", parameters=parameters, interval=watch_every),
    ]
    return deployments


def recycle_deployment(*, parameters: dict[str, Any] | None = None) -> RunnerDeployment:
    """The recycle deployment (`recycle-then-finetune/recycle-then-finetune`), by module, with these parameters."""
    return _by_module(recycle_then_finetune, name="recycle-then-finetune", parameters=parameters or {})


def _by_module(
    flow: Flow[..., Any], *, name: str, parameters: dict[str, Any], interval: timedelta | None = None
) -> RunnerDeployment:
    """`flow` as a deployment named `name` that names its flow by module, tagged `graftwork`, with `parameters`'
    defaults (and run every `interval`, when one is given)."""
    deployment = flow.to_deployment(
        name=name, tags=["graftwork"], entrypoint_type=EntrypointType.MODULE_PATH, parameters=parameters,
        interval=interval,
    )  # fmt: skip
    return cast(RunnerDeployment, deployment)


def deploy_recycle(*, pool: str) -> None:
    """Create (or update) the recycle deployment on the work pool `pool`, run by its workers (`graft worker
    --pool POOL`), which import the installed package: no image, no code to pull.

    Raises:
        prefect.exceptions.ObjectNotFound: the pool does not exist; `graft worker --pool POOL` creates it.
    """
    deploy(
        recycle_deployment(),
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )


def serve_all(*, watch_every: timedelta, data_dir: Path, recycle_pool: str | None = None, say: Say) -> None:
    """Serve the deployments from this process until Ctrl-C or SIGTERM (the recycle deployment on `recycle_pool`'s
    workers, when one is given). Either signal stops it the same way: the runner cancels what it runs and pauses
    the schedules it served, then returns.

    Raises:
        PrefectUnreachableError: the Prefect API stopped answering (seen at the latest when stopping).
    """
    if recycle_pool is not None:
        deploy_recycle(pool=recycle_pool)
    deployments = build_deployments(watch_every=watch_every, data_dir=data_dir, recycle_pool=recycle_pool)
    runner = Runner(pause_on_shutdown=True)
    for served in deployments:
        runner.add_deployment(served)
    # Prefect's own SIGTERM handler stops the runner from inside the running loop, leaving a coroutine never
    # awaited ("Runner.astop"); a SIGTERM that stops it as Ctrl-C does ends it cleanly.
    runner.handle_sigterm = as_ctrl_c  # type: ignore[method-assign]
    say(f"serving {len(deployments)} deployments: " + ", ".join(d.full_name for d in deployments))
    loop_errors = logging.getLogger("asyncio")
    loop_errors.addFilter(_api_gone)
    try:
        run_runner(runner)
    except httpx.HTTPError as e:
        url = PREFECT_API_URL.value()
        raise PrefectUnreachableError(
            f"the Prefect API at {url} stopped answering ({type(e).__name__}: {e}); `graft serve` stopped without "
            "pausing its deployments. Start that server again (or unset PREFECT_API_URL to serve on the data dir's "
            "own) and run `graft serve` again.",
            url=url,
        ) from None
    finally:
        loop_errors.removeFilter(_api_gone)
        _collect_interrupted_runner()


def run_runner(runner: Runner) -> None:
    """Run `runner` until it is interrupted."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())


def _collect_interrupted_runner() -> None:
    """Collect what Prefect's runner leaves when it is interrupted (Ctrl-C before it started, or an API that is
    gone): coroutines it never awaited and an event loop it never finished making, which would otherwise
    print a RuntimeWarning and an ignored `__del__` traceback when the interpreter exits."""
    unraisable = sys.unraisablehook

    def half_made_loop(hook: sys.UnraisableHookArgs) -> None:
        if not (isinstance(hook.exc_value, AttributeError) and "_ssock" in str(hook.exc_value)):
            unraisable(hook)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        sys.unraisablehook = half_made_loop
        try:
            gc.collect()
        finally:
            sys.unraisablehook = unraisable


def _api_gone(record: logging.LogRecord) -> bool:
    """Drop the event loop's report of a Prefect runner callback that failed because the API is gone or the
    loop already stopped (its cancellation observer, stopping): `serve_all` says so in one line instead."""
    from anyio import NoEventLoopError

    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, httpx.HTTPError | NoEventLoopError)


async def ensure_pool(*, name: str, concurrency: int | None) -> bool:
    """Create the process work pool `name` if it is missing; return whether it was created."""
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return False
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=concurrency))
            return True


def start_worker(*, pool: str, env: dict[str, str]) -> NoReturn:
    """Replace this process with a Prefect worker for `pool` with the environment `env` (so that stopping it stops
    the worker)."""
    os.execve(sys.executable, [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool], env)
