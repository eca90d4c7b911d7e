"""How fast the webhook receiver answers a burst of Hub deliveries, against its recorder limited to batches of one
(one transaction per delivery) and, with --before, against the receiver of another checkout, in the same run.

The receiver runs in a process of its own, served as `graft webhook` serves it, on a fresh registry with one
track watching the repo, and starts no Prefect run (its outbox marks each delivery started at once). This
process sends DISTINCT distinct deliveries, each twice, at once over CONNECTIONS connections, as the Hub would
from many pushes; it prints, per run, the answers per second, the median and slowest answer and the count of
each status, then each peer's median time over the repeats against the batched receiver's. It does so on
SQLite and on PostgreSQL (a throwaway database on the local server), with the receiver's process idle, then
busy: a pure-Python thread of its own spinning, which the receiver's threads share the interpreter with.

    python benchmarks/bench_webhook.py [--distinct 200] [--connections 64] [--repeat 2] [--postgres-url URL]
        [--before DIR]   # DIR holds a checkout named graftwork: git worktree add DIR/graftwork COMMIT
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
from dataclasses import dataclass
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
batching = {"max_batch": max_batch} if max_batch else {}  # 0: a receiver from before the recorder


def spin():
    while True:
        pass


if busy:  # a thread of the receiver's own that keeps the interpreter busy, as a Prefect client's work would
    threading.Thread(target=spin, daemon=True).start()
registry = Registry(engine=make_engine(url), store=BlobStore(blobs))
app = create_app(registry=registry, secret=sys.argv[5], start_run=lambda track, key: "run-" + key[:8],
                 poll_s=0.2, **batching)
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


async def burst(base: str, *, distinct: int, connections: int) -> tuple[float, list[tuple[int | str, float]]]:
    bodies = [json.dumps(payload(i)) for i in range(distinct)]
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def send(body: str) -> tuple[int | str, float]:
            began = time.perf_counter()
            try:
                answer = await client.post("/hooks/hub", content=body, headers={"X-Webhook-Secret": SECRET})
            except httpx.TransportError as e:  # counted, by its kind, with the answers
                return type(e).__name__, time.perf_counter() - began
            return answer.status_code, time.perf_counter() - began

        began = time.perf_counter()
        answers = await asyncio.gather(*(send(body) for body in bodies + bodies[::-1]))
        return time.perf_counter() - began, answers


@dataclass(frozen=True)
class Peer:
    """A receiver to measure: this checkout's with its recorder's batches of at most `max_batch`, or, with
    `path`, the receiver of the checkout `path`/graftwork as it was (`max_batch` 0: it has no such setting)."""

    name: str
    max_batch: int
    path: str | None = None


def run(url: str, peer: Peer, *, busy: bool, distinct: int, connections: int) -> float:
    """Serve `peer` on `url`'s registry, send the burst, wait for its outbox to empty; print a line and return
    the burst's seconds."""
    new_registry(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRAFT_", "PYTHONPATH"))}
    if peer.path is not None:
        env["PYTHONPATH"] = peer.path
    with tempfile.TemporaryDirectory() as blobs, open(Path(blobs) / "receiver.log", "w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, url, blobs, str(port), str(peer.max_batch), SECRET, str(int(busy))],
            env=env,
            cwd=blobs,
            stderr=log,  # shown when the receiver does not start
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
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(Counter(str(code) for code, _ in answers).items()))
    print(
        f"  {url.split(':')[0]:<18} {peer.name:<24} {len(answers)} answered in {took:5.2f} s "
        f"({len(answers) / took:5.1f}/s), median {statistics.median(seconds):5.2f} s, slowest {max(seconds):5.2f} s; "
        f"{codes}",
        flush=True,
    )
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--before", help="a folder holding another checkout, named graftwork, to measure too")
    args = parser.parse_args()
    peers = [Peer("batches of up to 100", 100), Peer("batches of one", 1)]
    if args.before:
        peers.append(Peer(f"{args.before}", 0, path=args.before))
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    for busy in (False, True):
        print(f"-- the receiver's process {'busy: a thread of its own spins' if busy else 'idle'}")
        for name in ("sqlite", "postgresql"):
            times: dict[Peer, list[float]] = {peer: [] for peer in peers}
            for repeat in range(args.repeat):
                for peer in peers if repeat % 2 == 0 else peers[::-1]:
                    with registry_url(name, admin=admin, postgres_url=args.postgres_url) as url:
                        times[peer].append(
                            run(url, peer, busy=busy, distinct=args.distinct, connections=args.connections)
                        )
            batched = statistics.median(times[peers[0]])
            for peer in peers[1:]:
                ratio = statistics.median(times[peer]) / batched
                print(f"{name}: {peer.name} takes {ratio:.2f}x the time of {peers[0].name} (medians)")


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
