"""How fast the webhook receiver answers a burst of Hub deliveries, against itself recording one delivery per
transaction (its recorder's batches of one) in the same run.

The receiver runs in a process of its own, served as `graft webhook` serves it, on a fresh registry with one
track watching the repo, and starts no Prefect run (its outbox marks each delivery started at once). This
process sends DISTINCT distinct deliveries, each twice, at once over CONNECTIONS connections, as the Hub would
from many pushes; it prints deliveries answered per second, the median and slowest answer, the 503s, and the
ratio of the two settings' times, on SQLite and on PostgreSQL (a throwaway database on the local server),
with the receiver's process idle, then busy with a thread of its own (as its outbox's Prefect calls keep it).

    python benchmarks/bench_webhook.py [--distinct 200] [--connections 64] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import Engine, create_engine, text

from graftwork.storage import registry as rows
from graftwork.storage.db import ensure_schema, make_engine, session_scope

SECRET = "bench-webhook-secret-0123456789abcdef"
REPO = "allenai/OLMo-2-1124-7B"
TRACK = {
    "name": "olmo-stage1",
    "source": {"kind": "hub-refs", "repo": REPO, "ref_pattern": "stage1-*"},
    "finetune": {"data": "/data/train.jsonl"},
    "eval": {"tasks": ["testbed_add"]},
    "gate": {"metrics": [{"task": "testbed_add", "metric": "exact_match"}]},
}
SERVE = """
import sys
import threading
from graftwork.deployments import webhook_http
from graftwork.deployments.webhook import create_app
from graftwork.storage import Registry
from graftwork.storage.blobs import BlobStore
from graftwork.storage.db import make_engine

url, blobs, port, max_batch, busy = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[6] == "1"


def spin():
    while True:
        pass


if busy:  # a thread of the receiver's own that keeps the interpreter busy, as a Prefect client's work would
    threading.Thread(target=spin, daemon=True).start()
registry = Registry(engine=make_engine(url), store=BlobStore(blobs))
app = create_app(registry=registry, secret=sys.argv[5], start_run=lambda track, key: "run-" + key[:8],
                 max_batch=max_batch, poll_s=0.2)
webhook_http.server(app, host="127.0.0.1", port=port, log_level="warning").run()
"""


def payload(i: int) -> dict[str, object]:
    """A delivery as the Hub sends it when the branch stage1-step{i} is pushed."""
    head = hashlib.sha1(f"{REPO}@{i}".encode()).hexdigest()
    return {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": REPO, "id": "6718e2c3c8f1b1c4f2d3a401", "headSha": head},
        "updatedRefs": [{"ref": f"refs/heads/stage1-step{i}", "oldSha": None, "newSha": head}],
        "webhook": {"id": "6790a1f2b3c4d5e6f7a8b9c0", "version": 3},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_registry(url: str) -> None:
    engine = make_engine(url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        rows.save_track(session, name=TRACK["name"], spec=TRACK, digest="bench")
    engine.dispose()


async def burst(base: str, *, distinct: int, connections: int) -> tuple[float, list[tuple[int, float]]]:
    bodies = [json.dumps(payload(i)) for i in range(distinct)]
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def send(body: str) -> tuple[int, float]:
            began = time.perf_counter()
            answer = await client.post("/hooks/hub", content=body, headers={"X-Webhook-Secret": SECRET})
            return answer.status_code, time.perf_counter() - began

        began = time.perf_counter()
        answers = await asyncio.gather(*(send(body) for body in bodies + bodies[::-1]))
        return time.perf_counter() - began, answers


def run(url: str, *, max_batch: int, busy: bool, distinct: int, connections: int) -> float:
    """Serve the receiver on `url`'s registry, send the burst, wait for its outbox to empty; print a line and
    return the burst's seconds."""
    new_registry(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRAFT_"))}
    with tempfile.TemporaryDirectory() as blobs, open(Path(blobs) / "receiver.log", "w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, url, blobs, str(port), str(max_batch), SECRET, str(int(busy))],
            env=env,
            cwd=blobs,
            stderr=log,  # its "not recorded within 5 s" lines, counted as 503s below
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise SystemExit(f"the receiver did not start:\n{log.read()}") from None
                    time.sleep(0.1)
            took, answers = asyncio.run(burst(base, distinct=distinct, connections=connections))
            while httpx.get(f"{base}/healthz", timeout=10).json()["outbox"]["waiting"]:
                time.sleep(0.1)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    seconds = [s for _, s in answers]
    codes = Counter(code for code, _ in answers)
    print(
        f"{url.split(':')[0]:<18} batches of ≤{max_batch:<4} {len(answers)} answered in {took:5.2f} s "
        f"({len(answers) / took:6.1f}/s), median {statistics.median(seconds):5.2f} s, slowest {max(seconds):5.2f} s, "
        f"202: {codes[202]}, 200: {codes[200]}, 503: {codes[503]}",
        flush=True,
    )
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    for busy in (False, True):
        print(f"-- the receiver's process {'busy with a thread of its own' if busy else 'idle'}")
        for name in ("sqlite", "postgresql"):
            times = {}
            for max_batch in (100, 1):
                with registry_url(name, admin=admin, postgres_url=args.postgres_url) as url:
                    times[max_batch] = run(
                        url, max_batch=max_batch, busy=busy, distinct=args.distinct, connections=args.connections
                    )
            print(f"{name}: one transaction per delivery takes {times[1] / times[100]:.2f}x the batched time")


@contextmanager
def registry_url(name: str, *, admin: Engine, postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty registry database: a SQLite file, or a PostgreSQL database on `admin`'s server."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'registry.db'}"
        return
    database = f"bench_webhook_{os.getpid()}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{database}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE {database} WITH (FORCE)"))


if __name__ == "__main__":
    main()
