"""Prefect's scheduler service, run the way the server runs it, against the installed Prefect and SQLAlchemy.

Prefect 3.8's server schedules deployments' flow runs in `schedule_deployments`, a docket perpetual service.
With SQLAlchemy 2.1 its bulk insert of the runs fails (`InvalidRequestError: Can't evaluate bulk DML statement`),
docket logs the error and tries again a minute later, and no deployment ever gets a scheduled run, while the rest
of the server carries on as if nothing were wrong. This test is here to catch the next upgrade (Prefect,
SQLAlchemy, a database driver, docket) that breaks the scheduler that way: it fails when the service, run once
on a fresh database, does not create the flow runs that its settings call for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

# The scheduler's settings, given to the server explicitly. A deployment with one schedule is scheduled up to
# MAX_RUNS runs and MAX_SCHEDULED_TIME ahead, stopping as soon as it has MIN_RUNS runs of which the last is at
# least MIN_SCHEDULED_TIME away. With a daily schedule the MIN_RUNS-th run is days away, so exactly MIN_RUNS.
MIN_RUNS = 5
INTERVAL = timedelta(days=1)
SCHEDULER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": str(MIN_RUNS),
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "100",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT1H",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME": "P100D",
}

# Run in a child process of its own, so that Prefect's settings and cached database engine are this test's
# alone. It migrates the database as the server does on start, creates a deployment with a daily schedule,
# runs `schedule_deployments` once through a docket worker, as the server's background worker runs it, and
# writes out the deployment's flow runs.
SCHEDULE_ONCE = f"""
import asyncio, json, sys
from datetime import timedelta

from docket import Docket, Worker
from prefect.server import models, schemas
from prefect.server.database import provide_database_interface
from prefect.server.schemas.schedules import IntervalSchedule
from prefect.server.services.scheduler import schedule_deployments


async def main():
    db = provide_database_interface()
    await db.create_db()
    async with db.session_context(begin_transaction=True) as session:
        flow = await models.flows.create_flow(session=session, flow=schemas.core.Flow(name="daily"))
        schedule = IntervalSchedule(interval=timedelta(seconds={INTERVAL.total_seconds()}))
        deployment = await models.deployments.create_deployment(
            session=session,
            deployment=schemas.core.Deployment(
                name="daily", flow_id=flow.id, schedules=[schemas.core.DeploymentSchedule(schedule=schedule)]
            ),
        )
    async with Docket(name="scheduler-test", url="memory://", execution_ttl=timedelta(0)) as docket:
        docket.register(schedule_deployments)
        async with Worker(docket) as worker:
            await worker.run_at_most({{schedule_deployments.__name__: 1}})
    async with db.session_context() as session:
        runs = await models.flow_runs.read_flow_runs(session=session)
        rows = [
            {{
                "deployment": r.deployment_id == deployment.id,
                "auto_scheduled": r.auto_scheduled,
                "state_type": r.state_type.value,
                "has_state": r.state_id is not None,
                "start": r.next_scheduled_start_time.isoformat(),
            }}
            for r in runs
        ]
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f)


asyncio.run(main())
"""


def _async_url(url: str) -> str:
    """The same database through the async driver Prefect's server uses for it."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}[parsed.get_backend_name()]
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


@pytest.mark.slow
def test_scheduler_creates_the_scheduled_flow_runs(database_url: str, tmp_path: Path) -> None:
    """On a fresh SQLite file and a fresh PostgreSQL database, one pass of the scheduler gives a deployment with a
    daily schedule exactly MIN_RUNS scheduled runs, a day apart, starting within a day, each with its state row."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= SCHEDULER_SETTINGS | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": _async_url(database_url),
    }
    result = tmp_path / "runs.json"
    before = datetime.now(UTC)
    child = subprocess.run(
        [sys.executable, "-c", SCHEDULE_ONCE, str(result)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    after = datetime.now(UTC)
    assert child.returncode == 0, child.stderr
    runs = json.loads(result.read_text())

    assert len(runs) == MIN_RUNS, f"the scheduler created {len(runs)} runs, not {MIN_RUNS}:\n{child.stderr}"
    assert all(r["deployment"] and r["auto_scheduled"] and r["has_state"] for r in runs), runs
    assert {r["state_type"] for r in runs} == {"SCHEDULED"}
    starts = sorted(datetime.fromisoformat(r["start"]) for r in runs)
    assert before < starts[0] <= after + INTERVAL
    assert [later - earlier for earlier, later in pairwise(starts)] == [INTERVAL] * (MIN_RUNS - 1)
