"""The Hub webhook receiver: authentication, validation, idempotency, the outbox that starts the runs, and a
burst over loopback.

Every test that touches the registry runs on SQLite and on PostgreSQL (the `registry` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL
from sqlalchemy import create_engine
from typer.testing import CliRunner

from graftwork.deployments import webhook_cli, webhook_http
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
from tests.registry.conftest import digest
from tests.registry.hooks import OLMO, SECRET, Burst, Starts, recorded, serving, settled, watch_tracks


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
        return recorded(self.registry)

    def settled(self, *, timeout: float = 60) -> list[tuple[str, str]]:
        """The runs started, once the outbox has none left waiting."""
        return settled(self.registry, self.starts, timeout=timeout)


@pytest.fixture
def watched(registry: Registry) -> Registry:
    """The registry with the tracks of `TRACKS`."""
    return watch_tracks(registry)


@pytest.fixture
def hooks(watched: Registry) -> Iterator[Hooks]:
    registry = watched
    starts = Starts()
    app = create_app(registry=registry, secret=SECRET, start_run=starts, max_body_bytes=20_000, poll_s=0.2)
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


def test_a_matching_delivery_queues_each_watching_track_once_and_the_outbox_starts_it_with_its_key(
    hooks: Hooks,
) -> None:
    payload = hub_payload("meta-llama/Llama-3.1-8B", refs=("refs/heads/main",))
    response = hooks.post(payload)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["tracks"] == ["llama-3-8b", "llama-3.1-all"]
    key = delivery_key(HubEvent.from_payload(payload))
    assert body["key"] == key
    calls = hooks.settled()
    recorded = hooks.deliveries()
    assert calls == [("llama-3-8b", recorded[0].key), ("llama-3.1-all", recorded[1].key)]
    with session_scope(hooks.registry.engine) as session:
        ids = [rows.get_track(session, name=name).id for name in body["tracks"]]
    assert [(r.key, r.track_id, r.flow_run_id, r.attempts) for r in recorded] == [
        (f"{key}:{ids[0]}", ids[0], "run-1", 0),
        (f"{key}:{ids[1]}", ids[1], "run-2", 0),
    ]
    assert all(r.started_at is not None and r.started_at >= r.received_at for r in recorded)

    olmo = hooks.post(hub_payload(OLMO, refs=("refs/heads/main", "refs/tags/stage1-step2000-tokens9B")))
    assert (olmo.status_code, olmo.json()["tracks"]) == (202, ["olmo-stage1"])
    assert [track for track, _ in hooks.settled()] == ["llama-3-8b", "llama-3.1-all", "olmo-stage1"]


def test_a_delivery_replayed_ten_times_starts_one_run(hooks: Hooks) -> None:
    payload = hub_payload(OLMO)
    statuses = [hooks.post(payload).json()["status"] for _ in range(10)]
    assert statuses == ["queued"] + ["duplicate"] * 9
    assert len(hooks.settled()) == 1
    assert len(hooks.deliveries()) == 1


def test_a_run_that_cannot_be_started_yet_is_answered_and_started_by_a_later_try(hooks: Hooks) -> None:
    hooks.starts.failures = 1
    answer = hooks.post(hub_payload(OLMO))
    assert (answer.status_code, answer.json()["status"]) == (202, "queued")
    [(track, key)] = hooks.settled(timeout=30)
    [row] = hooks.deliveries()
    assert (track, key, row.attempts, row.flow_run_id) == ("olmo-stage1", row.key, 1, "run-1")
    assert row.last_error == "ConnectionError: the Prefect API at http://127.0.0.1:4200/api is unreachable"
    assert hooks.post(hub_payload(OLMO)).json()["status"] == "duplicate"
    assert len(hooks.settled()) == 1


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
    errors = [r for r in caplog.records if r.name == "graftwork.webhook" and r.levelname == "ERROR"]
    # The outbox, polling the same database in the background, may log its own retry line meanwhile.
    [logged] = [r for r in errors if not r.getMessage().startswith("outbox: ")]
    assert logged.exc_info is None and detail in logged.getMessage()  # one line, no traceback
    assert all(r.exc_info is None and "trying again" in r.getMessage() for r in errors if r is not logged)


def test_healthz_checks_the_database(hooks: Hooks, tmp_path: Path) -> None:
    assert hooks.client.get("/healthz").json() == {
        "status": "ok",
        "outbox": {"waiting": 0, "failing": 0, "last_error": None},
    }
    unreachable = Registry(
        engine=create_engine("postgresql+psycopg://graft@127.0.0.1:1/graft"), store=BlobStore(str(tmp_path))
    )
    with TestClient(create_app(registry=unreachable, secret=SECRET)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


def test_a_burst_of_200_deliveries_each_sent_twice_starts_200_runs(watched: Registry) -> None:
    payloads = [hub_payload(OLMO, refs=(f"refs/heads/stage1-step{i}000-tokens{i}B",)) for i in range(200)]

    async def fire(url: str) -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            requests = [
                client.post("/hooks/hub", content=json.dumps(p), headers={"X-Webhook-Secret": SECRET})
                for p in payloads + payloads[::-1]
            ]
            return [(r.status_code, r.json().get("status", r.text)) for r in await asyncio.gather(*requests)]

    starts = Starts()
    with serving(create_app(registry=watched, secret=SECRET, start_run=starts, poll_s=0.2)) as url:
        answers = asyncio.run(fire(url))
        keys = [key for _, key in settled(watched, starts, timeout=60)]
    assert Counter(answers) == {(202, "queued"): 200, (200, "duplicate"): 200}
    assert len(keys) == len(set(keys)) == 200
    assert sorted(r.key for r in recorded(watched)) == sorted(keys)


def test_a_burst_against_a_slow_prefect_is_answered_before_the_runs_start(watched: Registry) -> None:
    """100 distinct deliveries from 20 threads while each run takes 0.2 s to start: the answers do not wait for
    Prefect (all are in while most runs are still to start), and the outbox then starts each run once."""

    starts = Starts()

    def slow(track: str, idempotency_key: str) -> str:
        time.sleep(0.2)
        return starts(track, idempotency_key)

    burst = Burst()
    with serving(create_app(registry=watched, secret=SECRET, start_run=slow, poll_s=0.2)) as url:
        burst.run(url, threads=20, each=5)
        started_when_answered = len(starts.calls)
        keys = [key for _, key in settled(watched, starts, timeout=120)]
    assert [status for status, _ in burst.answers] == [202] * 100
    assert started_when_answered < 50
    assert len(keys) == len(set(keys)) == 100
    assert sorted(r.key for r in recorded(watched)) == sorted(keys)


def test_tracks_watching_reads_each_source_kind(watched: Registry) -> None:
    with session_scope(watched.engine) as session:
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
    served: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: served.append(server.config))
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
    [config] = served
    assert (config.host, config.port, config.log_level, config.log_config) == (
        "127.0.0.1", 8123, "info", webhook_cli.access_log_config()
    )  # fmt: skip
    assert issubclass(config.http, webhook_http.GuardedProtocol) and config.limit_concurrency == 512
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
