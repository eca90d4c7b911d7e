"""The webhook receiver's recorder: deliveries that wait for the database are recorded together, one transaction
for all, with the outcome each would have had alone; a failed transaction records none of them; a delivery
given up before its transaction began is not recorded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from graftwork.deployments import deliveries as receiver
from graftwork.deployments.deliveries import record_deliveries
from graftwork.deployments.hub_events import HubEvent, delivery_key
from graftwork.deployments.recorder import Recorder
from graftwork.errors import DatabaseError
from graftwork.storage import Registry
from tests.hub_fixtures import hub_payload
from tests.registry.hooks import OLMO, recorded, watch_tracks

LLAMA = "meta-llama/Llama-3.1-8B"  # watched by two tracks


@pytest.fixture
def watched(registry: Registry) -> Registry:
    return watch_tracks(registry)


def olmo(step: int) -> HubEvent:
    return HubEvent.from_payload(hub_payload(OLMO, refs=(f"refs/heads/stage1-step{step}-tokens{step}B",)))


@contextmanager
def commits(registry: Registry) -> Iterator[list[None]]:
    """The transactions committed on `registry` inside the block, one entry each."""
    seen: list[None] = []

    def committed(_: Any) -> None:
        seen.append(None)

    event.listen(registry.engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(registry.engine, "commit", committed)


@contextmanager
def database_busy(registry: Registry) -> Iterator[None]:
    """The deliveries' table held by another transaction: the receiver's turn on SQLite's one writer (another
    of its threads), a table lock on PostgreSQL (another process)."""
    if registry.engine.dialect.name == "sqlite":
        with receiver._SQLITE_TURN:
            yield
        return
    with registry.engine.begin() as connection:
        connection.exec_driver_sql("LOCK TABLE webhook_deliveries IN EXCLUSIVE MODE")
        yield


@contextmanager
def running(recorder: Recorder) -> Iterator[Recorder]:
    recorder.start()
    try:
        yield recorder
    finally:
        recorder.stop()


def test_a_batch_has_the_outcomes_each_delivery_would_have_alone(watched: Registry) -> None:
    unwatched = HubEvent.from_payload(hub_payload("someone/else"))
    llama = HubEvent.from_payload(hub_payload(LLAMA))
    [before] = record_deliveries(watched, events=[olmo(1)])
    outcomes = record_deliveries(watched, events=[olmo(2), olmo(1), llama, unwatched, olmo(2), llama])
    assert before.status == "queued"
    assert [(o.status, o.tracks, o.reason) for o in outcomes] == [
        ("queued", ("olmo-stage1",), ""),
        ("duplicate", ("olmo-stage1",), ""),  # recorded by the transaction before
        ("queued", ("llama-3-8b", "llama-3.1-all"), ""),
        ("ignored", (), "no track watches someone/else"),
        ("duplicate", ("olmo-stage1",), ""),  # recorded earlier in this one
        ("duplicate", ("llama-3-8b", "llama-3.1-all"), ""),
    ]
    assert [o.key for o in outcomes] == [delivery_key(e) for e in (olmo(2), olmo(1), llama, unwatched, olmo(2), llama)]
    tracks = {row.key: row.track_id is not None for row in recorded(watched)}
    assert len(tracks) == 5 and sum(tracks.values()) == 4  # olmo 1 and 2, llama once per track; one ignored


def test_deliveries_that_wait_for_the_database_are_recorded_in_one_transaction(watched: Registry) -> None:
    with running(Recorder(watched)) as recorder, commits(watched) as seen:
        with database_busy(watched):
            futures = [recorder.submit(olmo(i)) for i in range(50)]
        outcomes = [future.result(timeout=30) for future in futures]
    assert [o.status for o in outcomes] == ["queued"] * 50
    assert len(seen) <= 2  # the first may have been taken alone, before the others were queued
    assert len(recorded(watched)) == 50


def test_a_delivery_given_up_before_its_transaction_is_not_recorded(watched: Registry) -> None:
    with running(Recorder(watched)) as recorder:
        with database_busy(watched):
            first = recorder.submit(olmo(1))
            while not first.running():  # the recorder took it, and waits for the database with it
                time.sleep(0.01)
            given_up = recorder.submit(olmo(2))
            assert given_up.cancel()
        assert first.result(timeout=30).status == "queued"
    [row] = recorded(watched)
    assert row.key.startswith(delivery_key(olmo(1)))


def test_a_failed_transaction_fails_each_of_its_deliveries_and_the_recorder_goes_on(watched: Registry) -> None:
    with watched.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE webhook_deliveries")
    with running(Recorder(watched)) as recorder:
        futures = [recorder.submit(olmo(i)) for i in range(3)]
        for future in futures:
            with pytest.raises(DatabaseError, match="webhook_deliveries"):
                future.result(timeout=30)
        with pytest.raises(DatabaseError, match="webhook_deliveries"):
            recorder.submit(olmo(9)).result(timeout=30)


def test_a_recorder_not_started_refuses_deliveries(watched: Registry) -> None:
    with pytest.raises(RuntimeError, match="the webhook recorder is not running; start it"):
        Recorder(watched).submit(olmo(1))
