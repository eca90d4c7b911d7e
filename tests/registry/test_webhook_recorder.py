"""The webhook receiver's recorder: deliveries that wait for the database are recorded together, one transaction
for all, with the outcome each would have had alone; a failed transaction records none of them; a delivery
given up before its transaction began is not recorded."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from graftwork.deployments import deliveries as receiver
from graftwork.deployments.deliveries import Outcome, record_deliveries
from graftwork.deployments.hub_events import HubEvent, delivery_key
from graftwork.deployments.recorder import Recorder
from graftwork.deployments.webhook import create_app
from graftwork.errors import DatabaseError, RecorderStoppedError
from graftwork.storage import Registry, deliveries
from graftwork.storage.db import session_scope
from tests.hub_fixtures import hub_payload
from tests.registry.hooks import OLMO, SECRET, Starts, recorded, serving, watch_tracks

LLAMA = "meta-llama/Llama-3.1-8B"  # watched by two tracks


@pytest.fixture
def watched(registry: Registry) -> Registry:
    return watch_tracks(registry)


def olmo(step: int) -> HubEvent:
    return HubEvent.from_payload(hub_payload(OLMO, refs=(f"refs/heads/stage1-step{step}-tokens{step}B",)))


@contextmanager
def commits(registry: Registry) -> Iterator[list[None]]:
    """The transactions the recorder committed on `registry` inside the block, one entry each."""
    seen: list[None] = []

    def committed(_: Any) -> None:
        if threading.current_thread().name == "webhook-recorder":
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
            wait_running(first)  # the recorder took it, and waits for the database with it
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
    with pytest.raises(RecorderStoppedError, match="the webhook recorder is not running; start it"):
        Recorder(watched).submit(olmo(1))


def eventually(done: Callable[[], bool], *, what: str) -> None:
    """Wait until `done()`; fail, saying `what` did not happen, after 30 s."""
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"{what} within 30 s"
        time.sleep(0.01)


def wait_running(future: Future[Outcome]) -> None:
    """Wait until the recorder has taken `future`'s delivery into a transaction."""
    eventually(future.running, what="the recorder did not take the delivery")


def test_stop_records_what_is_queued_and_later_deliveries_are_refused(watched: Registry) -> None:
    recorder = Recorder(watched)
    recorder.start()
    with database_busy(watched):
        futures = [recorder.submit(olmo(0))]
        wait_running(futures[0])
        futures += [recorder.submit(olmo(i)) for i in (1, 2)]  # queued behind the transaction that waits
        stopping = threading.Thread(target=recorder.stop)
        stopping.start()
        eventually(lambda: not recorder_accepts(recorder), what="the recorder did not stop taking deliveries")
    stopping.join(timeout=30)
    assert [future.result(timeout=0).status for future in futures] == ["queued"] * 3
    assert len(recorded(watched)) == 3
    with pytest.raises(RecorderStoppedError, match="the webhook recorder is not running; start it"):
        recorder.submit(olmo(9))


def recorder_accepts(recorder: Recorder) -> bool:
    try:
        recorder.submit(olmo(99)).cancel()
    except RecorderStoppedError:
        return False
    return True


def test_a_delivery_answered_503_before_its_transaction_began_is_not_recorded(watched: Registry) -> None:
    """Through the served receiver: the first delivery is in a transaction that waits for the database, the
    second waits behind it; both are answered 503 after 2 s, and only the first is recorded once the database
    is free (the 503 says it may be: a redelivery of it is a duplicate)."""
    app = create_app(registry=watched, secret=SECRET, start_run=Starts(), answer_within_s=2)
    answers: dict[int, int] = {}

    def post(url: str, step: int) -> None:
        body = json.dumps(hub_payload(OLMO, refs=(f"refs/heads/stage1-step{step}-tokens{step}B",)))
        answers[step] = httpx.post(f"{url}/hooks/hub", content=body, headers={"X-Webhook-Secret": SECRET}).status_code

    with serving(app) as url:
        with database_busy(watched):
            first = threading.Thread(target=post, args=(url, 1))
            first.start()
            wait_for_transaction()
            post(url, 2)
            first.join(timeout=30)
        eventually(
            lambda: bool(recorded(watched)), what="the first delivery was not recorded once the database was free"
        )
    assert answers == {1: 503, 2: 503}
    [row] = recorded(watched)
    assert row.key.startswith(delivery_key(olmo(1)))


def wait_for_transaction() -> None:
    """Wait until a receiver's recorder is in a transaction (which waits while `database_busy` holds the database)."""
    eventually(
        lambda: any(recording(thread) for thread in threading.enumerate() if thread.name == "webhook-recorder"),
        what="the recorder did not start a transaction",
    )


def recording(thread: threading.Thread) -> bool:
    """Whether `thread` is inside `record_deliveries` now."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code is record_deliveries.__code__:
            return True
        frame = frame.f_back
    return False


def test_two_transactions_recording_the_same_keys_in_opposite_orders_do_not_deadlock(watched: Registry) -> None:
    """PostgreSQL: a transaction holding key A waits for nothing; one that gets [B, A] inserts A first, so it
    waits for the first before it holds B, and the first can still record B."""
    if watched.engine.dialect.name != "postgresql":
        pytest.skip("SQLite lets one writer in at a time: its transactions never wait for each other's rows")
    a, b = "key-a", "key-b"
    second: list[set[str]] = []
    with session_scope(watched.engine) as first:
        assert deliveries.record(first, rows=[(a, {}, None)]) == {a}

        def record_second() -> None:
            with session_scope(watched.engine) as session:
                second.append(deliveries.record(session, rows=[(b, {}, None), (a, {}, None)]))

        thread = threading.Thread(target=record_second)
        thread.start()
        wait_for_lock_wait(watched)
        assert deliveries.record(first, rows=[(b, {}, None)]) == {b}
    thread.join(timeout=30)
    assert second == [set()]


def wait_for_lock_wait(registry: Registry) -> None:
    """Wait until a session of this database waits for a row lock."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )

    def waiting() -> bool:
        with registry.engine.connect() as connection:
            return bool(connection.execute(query).scalar())

    eventually(waiting, what="the second transaction did not wait for the first")


def test_a_receiver_that_is_not_recording_answers_503_and_records_nothing(watched: Registry) -> None:
    client = TestClient(create_app(registry=watched, secret=SECRET))  # no lifespan: its recorder never started
    body = json.dumps(hub_payload(OLMO))
    response = client.post("/hooks/hub", content=body, headers={"X-Webhook-Secret": SECRET})
    assert (response.status_code, response.json()["detail"]) == (
        503,
        "the receiver is stopping and did not record the delivery; redeliver it.",
    )
    assert recorded(watched) == []
