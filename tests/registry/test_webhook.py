"""The Hub webhook receiver: authentication, validation, idempotency, and a burst over loopback.

Every test that touches the registry runs on SQLite and on PostgreSQL (the `registry` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from graftwork.deployments import webhook_cli
from graftwork.deployments.deliveries import tracks_watching
from graftwork.deployments.hub_events import HubEvent, delivery_key
from graftwork.deployments.webhook import create_app
from graftwork.errors import WebhookSecretError
from graftwork.storage import Registry
from graftwork.storage import registry as rows
from graftwork.storage.blobs import BlobStore
from graftwork.storage.db import session_scope
from graftwork.storage.models import WebhookDelivery
from tests.hub_fixtures import hub_payload, sha
from tests.registry.conftest import digest, track_spec

SECRET = "s3cret-for-tests-0123456789abcdef"
OLMO = "allenai/OLMo-2-1124-7B"
TRACKS = {
    "olmo-stage1": {"kind": "hub-refs", "repo": OLMO, "ref_pattern": "stage1-*"},
    "llama-3-8b": {"kind": "hub-repos", "author": "meta-llama", "name_pattern": "Llama-3.*-8B"},
    "llama-3.1-all": {"kind": "hub-repos", "author": "meta-llama", "name_pattern": "Llama-3.1-*"},
    "testbed-demo": {"kind": "local", "release_dir": "releases/"},
}


@dataclass
class Starts:
    """A `start_run` that records its calls (thread-safe) and can be told to fail."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, track: str, idempotency_key: str) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the Prefect API at http://127.0.0.1:4200/api is unreachable")
            self.calls.append((track, idempotency_key))


@dataclass
class Hooks:
    registry: Registry
    starts: Starts
    app: FastAPI
    client: TestClient

    def post(self, payload: object, *, secret: str | None = SECRET) -> httpx.Response:
        headers = {} if secret is None else {"X-Webhook-Secret": secret}
        return self.client.post("/hooks/hub", content=json.dumps(payload), headers=headers)

    def deliveries(self) -> list[WebhookDelivery]:
        with session_scope(self.registry.engine) as session:
            return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


@pytest.fixture
def hooks(registry: Registry) -> Iterator[Hooks]:
    with session_scope(registry.engine) as session:
        for name, source in TRACKS.items():
            rows.save_track(session, name=name, spec=(given := track_spec(name, source)), digest=digest(given))
    starts = Starts()
    app = create_app(registry=registry, secret=SECRET, start_run=starts, max_body_bytes=20_000)
    with TestClient(app) as client:
        yield Hooks(registry, starts, app, client)


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET[:-1], SECRET + "x", SECRET.upper()])
def test_a_missing_or_wrong_secret_is_refused_without_echoing_it(hooks: Hooks, secret: str | None) -> None:
    response = hooks.post(hub_payload(OLMO), secret=secret)
    assert response.status_code == 401
    assert "X-Webhook-Secret" in response.json()["detail"]
    assert SECRET not in response.text and SECRET.upper() not in response.text
    assert hooks.starts.calls == [] and hooks.deliveries() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event": {"action": "update"', "not JSON"),
        (b"\xff\xfe not utf-8", "not JSON"),
        (b"[" * 5_000 + b"]" * 5_000, "not JSON"),
        (b'["event", "repo"]', "JSON array, not an object"),
        (json.dumps(hub_payload(OLMO)).replace('"private": false', '"private": NaN').encode(), "NaN is not a JSON"),
        (json.dumps(hub_payload(OLMO)).replace('"private": false', '"private": -Infinity').encode(), "-Infinity"),
        (json.dumps(hub_payload(OLMO)).replace('"private": false', '"private": 1e999').encode(), "1e999 is beyond"),
    ],
    ids=["truncated", "not-utf8", "too-deep", "array", "nan", "infinity", "1e999"],
)
def test_a_body_that_is_not_a_json_object_is_422_with_the_reason(hooks: Hooks, body: bytes, reason: str) -> None:
    response = hooks.client.post("/hooks/hub", content=body, headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert hooks.starts.calls == [] and hooks.deliveries() == []


def _without_repo(p: dict[str, Any]) -> None:
    del p["repo"]


def _short_head_sha(p: dict[str, Any]) -> None:
    p["repo"]["headSha"] = "abc123"


def _ref_without_name(p: dict[str, Any]) -> None:
    del p["updatedRefs"][0]["ref"]


@pytest.mark.parametrize(
    ("breaks", "reason"),
    [
        (_without_repo, "repo: Field required"),
        (_short_head_sha, "repo.headSha: String should match pattern"),
        (_ref_without_name, "updatedRefs.0.ref: Field required"),
    ],
    ids=["no-repo", "bad-head-sha", "ref-without-name"],
)
def test_a_payload_that_is_not_a_hub_webhook_is_422_naming_the_field(hooks: Hooks, breaks: Any, reason: str) -> None:
    payload = hub_payload(OLMO)
    breaks(payload)
    response = hooks.post(payload)
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert hooks.starts.calls == [] and hooks.deliveries() == []


def test_an_oversize_body_is_413_declared_or_streamed(hooks: Hooks) -> None:
    huge = hub_payload(OLMO, refs=tuple(f"refs/heads/stage1-step{i}-tokens{i}B" for i in range(1_000)))
    body = json.dumps(huge).encode()
    assert len(body) > 20_000
    declared = hooks.client.post("/hooks/hub", content=body, headers={"X-Webhook-Secret": SECRET})
    streamed = hooks.client.post(
        "/hooks/hub",
        content=(body[i : i + 4096] for i in range(0, len(body), 4096)),
        headers={"X-Webhook-Secret": SECRET},
    )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "larger than 20000 bytes" in response.json()["detail"]
    assert hooks.starts.calls == [] and hooks.deliveries() == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (hub_payload("someone/unrelated-model"), "no track watches someone/unrelated-model"),
        (
            hub_payload(OLMO, refs=("refs/heads/main",)),
            f"tracks olmo-stage1 watch {OLMO}, but not refs/heads/main (see their ref patterns)",
        ),
        (hub_payload("meta-llama/Llama-2-70b-hf", refs=("refs/heads/main",)), "no track watches"),
        (hub_payload(OLMO, repo_type="dataset"), "is a dataset repo"),
        (hub_payload(OLMO, action="create", scope="discussion"), "a discussion create event brings no new release"),
        (
            hub_payload(OLMO, refs=("refs/pr/12",)),
            "only refs/pr/12 changed: pull requests and refs that are not branches or tags bring no release",
        ),
        (hub_payload("meta-llama/Llama-3.1-8B", refs=("refs/convert/parquet",)), "only refs/convert/parquet changed"),
    ],
    ids=["unknown-repo", "ref-not-watched", "name-not-watched", "dataset", "discussion", "pull-request", "convert"],
)
def test_a_delivery_no_track_watches_is_recorded_and_ignored(
    hooks: Hooks, payload: dict[str, Any], reason: str
) -> None:
    response = hooks.post(payload)
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    assert hooks.starts.calls == []
    [row] = hooks.deliveries()
    assert row.track_id is None and row.payload == payload


def test_a_matching_delivery_starts_each_watching_track_once_with_its_key(hooks: Hooks) -> None:
    payload = hub_payload("meta-llama/Llama-3.1-8B", refs=("refs/heads/main",))
    response = hooks.post(payload)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "started"
    assert body["tracks"] == ["llama-3-8b", "llama-3.1-all"]
    key = delivery_key(HubEvent.from_payload(payload))
    assert body["key"] == key
    recorded = hooks.deliveries()
    assert hooks.starts.calls == [("llama-3-8b", recorded[0].key), ("llama-3.1-all", recorded[1].key)]
    with session_scope(hooks.registry.engine) as session:
        ids = [rows.get_track(session, name=name).id for name in body["tracks"]]
    assert [(r.key, r.track_id) for r in recorded] == [(f"{key}:{i}", i) for i in ids]

    olmo = hooks.post(hub_payload(OLMO, refs=("refs/heads/main", "refs/tags/stage1-step2000-tokens9B")))
    assert olmo.status_code == 200
    assert olmo.json()["tracks"] == ["olmo-stage1"]
    assert [track for track, _ in hooks.starts.calls] == ["llama-3-8b", "llama-3.1-all", "olmo-stage1"]


def test_a_delivery_replayed_ten_times_starts_one_run(hooks: Hooks) -> None:
    payload = hub_payload(OLMO)
    statuses = [hooks.post(payload).json()["status"] for _ in range(10)]
    assert statuses == ["started"] + ["duplicate"] * 9
    assert len(hooks.starts.calls) == 1
    assert len(hooks.deliveries()) == 1


def test_a_run_that_cannot_be_started_records_nothing_so_a_redelivery_starts_it(hooks: Hooks) -> None:
    hooks.starts.failures = 1
    failed = hooks.post(hub_payload(OLMO))
    assert failed.status_code == 503
    assert "track olmo-stage1" in failed.json()["detail"] and "redeliver" in failed.json()["detail"]
    assert hooks.deliveries() == []
    retried = hooks.post(hub_payload(OLMO))
    assert retried.status_code == 200 and retried.json()["status"] == "started"
    assert len(hooks.starts.calls) == 1


def test_a_database_that_fails_under_a_delivery_is_503_and_one_log_line(
    hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    with hooks.registry.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE webhook_deliveries")
    response = hooks.post(hub_payload(OLMO))
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("the database at ") and "webhook_deliveries" in detail
    assert hooks.starts.calls == []
    [logged] = [r for r in caplog.records if r.name == "graftwork.webhook" and r.levelname == "ERROR"]
    assert logged.exc_info is None and detail in logged.getMessage()  # one line, no traceback


def test_healthz_checks_the_database(hooks: Hooks, tmp_path: Path) -> None:
    assert hooks.client.get("/healthz").json() == {"status": "ok"}
    unreachable = Registry(
        engine=create_engine("postgresql+psycopg://graft@127.0.0.1:1/graft"), store=BlobStore(str(tmp_path))
    )
    with TestClient(create_app(registry=unreachable, secret=SECRET)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a background thread; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Idle connections stay open longer than a loaded machine can take to reuse one (uvicorn's 5 s default
    # closed connections the clients' pools were about to send on: httpx.ReadError under CI load).
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=120))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_a_burst_of_200_deliveries_each_sent_twice_starts_200_runs(hooks: Hooks) -> None:
    payloads = [hub_payload(OLMO, refs=(f"refs/heads/stage1-step{i}000-tokens{i}B",)) for i in range(200)]

    async def fire(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            requests = [
                client.post("/hooks/hub", content=json.dumps(p), headers={"X-Webhook-Secret": SECRET})
                for p in payloads + payloads[::-1]
            ]
            return [r.status_code for r in await asyncio.gather(*requests)]

    with serving(hooks.app) as url:
        statuses = asyncio.run(fire(url))
    assert statuses == [200] * 400
    keys = [key for _, key in hooks.starts.calls]
    assert len(keys) == len(set(keys)) == 200
    recorded = hooks.deliveries()
    assert sorted(r.key for r in recorded) == sorted(keys)
    with session_scope(hooks.registry.engine) as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 200


def test_a_burst_from_20_threads_against_a_slow_prefect_is_answered_and_recorded_once(hooks: Hooks) -> None:
    """200 distinct deliveries from 20 threads while each run takes 0.5 s to start: the database is not
    held while Prefect answers, so every delivery is answered 200 and recorded once, with one run each."""
    real = hooks.starts.__call__

    def slow(track: str, idempotency_key: str) -> None:
        time.sleep(0.5)
        real(track, idempotency_key)

    app = create_app(registry=hooks.registry, secret=SECRET, start_run=slow)
    answers: list[int] = []
    lock = threading.Lock()

    def sender(url: str, thread: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(10):
                payload = hub_payload(OLMO, refs=(f"refs/heads/stage1-step{thread}{i:02d}-tokens{i}B",))
                status = client.post("/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET})
                with lock:
                    answers.append(status.status_code)

    with serving(app) as url:
        threads = [threading.Thread(target=sender, args=(url, t)) for t in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    keys = [key for _, key in hooks.starts.calls]
    assert answers == [200] * 200  # answered, none lost
    assert len(keys) == len(set(keys)) == 200  # one run each, none doubled
    assert sorted(r.key for r in hooks.deliveries()) == sorted(keys)  # recorded, once


def test_tracks_watching_reads_each_source_kind(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        for name, source in TRACKS.items():
            rows.save_track(session, name=name, spec=(given := track_spec(name, source)), digest=digest(given))
        rows.save_track(
            session, name="not-a-track", spec={"name": "not-a-track"}, digest=digest({"name": "not-a-track"})
        )

        def watching(repo_id: str, refs: list[str] | None = None) -> list[str]:
            return [track.name for track in tracks_watching(session, repo_id=repo_id, refs=refs)]

        assert watching(OLMO) == ["olmo-stage1"]
        assert watching(OLMO, ["refs/heads/main"]) == []
        assert watching(OLMO, ["stage1-step1"]) == ["olmo-stage1"]
        assert watching("meta-llama/Llama-3.2-8B") == ["llama-3-8b"]
        assert watching("meta-llama/llama-3.2-8b") == []
        assert watching("releases/testbed") == []


def test_the_delivery_key_is_stable_and_ignores_the_order_of_refs() -> None:
    refs = ("refs/heads/stage1-step1", "refs/tags/stage1-step2")
    one = HubEvent.from_payload(hub_payload(OLMO, refs=refs))
    assert delivery_key(one) == delivery_key(HubEvent.from_json(json.dumps(hub_payload(OLMO, refs=refs))))
    reordered = hub_payload(OLMO, refs=refs)
    reordered["updatedRefs"].reverse()
    assert delivery_key(HubEvent.from_payload(reordered)) == delivery_key(one)
    moved = hub_payload(OLMO, refs=refs)
    moved["updatedRefs"][0]["newSha"] = sha("another commit")
    assert delivery_key(HubEvent.from_payload(moved)) != delivery_key(one)
    assert one.head_sha == hub_payload(OLMO, refs=refs)["repo"]["headSha"]
    assert one.updated_refs == tuple((ref, one.head_sha) for ref in refs)


def test_graft_webhook_needs_a_secret_and_never_prints_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prefect_server: None
) -> None:
    cli = typer.Typer()
    cli.command()(webhook_cli.webhook)
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(kwargs))
    monkeypatch.setenv("GRAFT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("GRAFT_DATABASE_URL", raising=False)

    refused = CliRunner().invoke(cli, ["--port", "8123"])
    assert refused.exit_code == 1
    assert "GRAFT_WEBHOOK_SECRET is not set" in refused.output
    assert served == []

    monkeypatch.setenv("GRAFT_WEBHOOK_SECRET", SECRET)
    started = CliRunner().invoke(cli, ["--port", "8123"])
    assert started.exit_code == 0, started.output
    assert served == [
        {"host": "127.0.0.1", "port": 8123, "log_level": "info", "log_config": webhook_cli.access_log_config()}
    ]
    assert SECRET not in started.output
    with pytest.raises(WebhookSecretError, match="GRAFT_WEBHOOK_SECRET"):
        create_app(registry=Registry(engine=create_engine("sqlite://"), store=BlobStore(str(tmp_path))), secret="")


def test_a_secret_sent_in_the_query_string_never_reaches_the_access_log(tmp_path: Path, prefect_server: None) -> None:
    """`graft webhook` as it runs: a request that carries a secret in its query string is refused, and
    the access log shows its path without the query."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRAFT_DATA_DIR": str(tmp_path), "GRAFT_WEBHOOK_SECRET": SECRET}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())  # the session's server, where runs would start
    for name in ("GRAFT_DATABASE_URL", "GRAFT_BLOB_URL"):
        env.pop(name, None)
    graft = Path(sys.executable).parent / "graft"
    receiver = subprocess.Popen(
        [str(graft), "webhook", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz?token=leak-{SECRET}", timeout=2)
                break
            except httpx.TransportError:
                assert receiver.poll() is None and time.monotonic() < deadline, "graft webhook did not start"
                time.sleep(0.3)
        refused = httpx.post(f"http://127.0.0.1:{port}/hooks/hub?secret={SECRET}", content=b"{}", timeout=10)
    finally:
        receiver.terminate()
        output = receiver.communicate(timeout=30)[0].decode()
    assert (health.status_code, refused.status_code) == (200, 401)
    assert '"GET /healthz HTTP/1.1" 200' in output and '"POST /hooks/hub HTTP/1.1" 401' in output
    assert SECRET not in output and "leak-" not in output
