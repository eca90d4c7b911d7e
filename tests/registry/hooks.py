"""What the webhook receiver's tests share: tracks that watch Hub repos, a `start_run` that counts its calls,
the receiver served as `graft webhook` serves it, and a burst of deliveries from threads."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from graftwork.deployments import webhook_http
from graftwork.storage import Registry, deliveries
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import WebhookDelivery
from tests.hub_fixtures import hub_payload
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

    def __call__(self, track: str, idempotency_key: str) -> str:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the Prefect API at http://127.0.0.1:4200/api is unreachable")
            self.calls.append((track, idempotency_key))
            return f"run-{len(self.calls)}"


def recorded(registry: Registry) -> list[WebhookDelivery]:
    """The delivery rows, in the order they were recorded."""
    with session_scope(registry.engine) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def settled(registry: Registry, starts: Starts, *, timeout: float) -> list[tuple[str, str]]:
    """The runs `starts` was asked for, once the registry's outbox has none left waiting."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(registry.engine) as session:
            waiting = deliveries.backlog(session).waiting
        if not waiting:
            return list(starts.calls)
        assert time.monotonic() < deadline, f"{waiting} deliveries still wait for their run"
        time.sleep(0.05)


def watch_tracks(registry: Registry) -> Registry:
    """`registry`, with the tracks of `TRACKS` added."""
    with session_scope(registry.engine) as session:
        for name, source in TRACKS.items():
            rows.save_track(session, name=name, spec=(given := track_spec(name, source)), digest=digest(given))
    return registry


@contextmanager
def serving(app: FastAPI, *, read_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve `app` as `graft webhook` does (the guarded protocol, the app's lifespan: its outbox drains) on a free
    loopback port in a background thread; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = webhook_http.server(app, host="127.0.0.1", port=0, read_timeout_s=read_timeout_s, log_level="warning")
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
        thread.join(timeout=30)
        sock.close()


@dataclass
class Burst:
    """What a burst of deliveries from threads got: each answer's status and seconds."""

    answers: list[tuple[int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, url: str, *, thread: int, count: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(count):
                payload = hub_payload(OLMO, refs=(f"refs/heads/stage1-step{thread}{i:02d}-tokens{i}B",))
                began = time.perf_counter()
                status = client.post("/hooks/hub", content=json.dumps(payload), headers={"X-Webhook-Secret": SECRET})
                with self.lock:
                    self.answers.append((status.status_code, time.perf_counter() - began))

    def run(self, url: str, *, threads: int, each: int) -> float:
        """Send `threads` x `each` distinct deliveries; return the seconds it took."""
        began = time.perf_counter()
        senders = [
            threading.Thread(target=self.send, args=(url,), kwargs={"thread": t, "count": each}) for t in range(threads)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        return time.perf_counter() - began
