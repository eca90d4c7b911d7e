"""The webhook receiver on a loaded machine and at its HTTP edges, served as `graft webhook` serves it (the
guarded protocol, the outbox draining): a burst beside a CPU hog on both databases, oversized and slow requests
over raw sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from graftwork.deployments.webhook import create_app
from graftwork.deployments.webhook_http import MAX_HEADER_BYTES, MAX_HEADERS
from graftwork.storage import Registry
from tests.hub_fixtures import hub_payload
from tests.registry.hooks import OLMO, SECRET, Burst, Starts, recorded, serving, settled, watch_tracks

BOUND_S = 5.0  # the receiver's answer_within_s: a delivery it cannot record sooner is answered 503


@pytest.fixture
def watched(registry: Registry) -> Registry:
    """The registry with tracks that watch Hub repos."""
    return watch_tracks(registry)


@contextmanager
def cpu_hog(processes: int) -> Iterator[None]:
    """`processes` busy loops, one per process, stopped at the end."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], env={"PATH": os.environ.get("PATH", "")})
        for _ in range(processes)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.send_signal(signal.SIGKILL)
            hog.wait()


def test_a_burst_beside_a_cpu_hog_is_answered_in_bound_and_each_run_started_once(
    watched: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 distinct deliveries from 20 threads while busy loops outnumber the cores: every delivery is answered
    202 within the bound, none is lost (each has a started run) and none doubled (one start per key)."""
    starts = Starts()
    burst = Burst()
    with serving(create_app(registry=watched, secret=SECRET, start_run=starts, answer_within_s=BOUND_S)) as url:
        with cpu_hog((os.cpu_count() or 2) + 1):
            took = burst.run(url, threads=20, each=10)
        keys = [key for _, key in settled(watched, starts, timeout=120)]
    slowest = max(seconds for _, seconds in burst.answers)
    rows = recorded(watched)
    lost = sum(1 for row in rows if row.started_at is None)
    with capsys.disabled():
        print(
            f"\n[{watched.engine.dialect.name}] {len(burst.answers)} deliveries in {took:.1f} s beside a CPU hog: "
            f"slowest answer {slowest:.2f} s, lost {lost}, doubled {len(keys) - len(set(keys))}"
        )
    assert [status for status, _ in burst.answers] == [202] * 200
    assert slowest < BOUND_S
    assert len(rows) == len(keys) == len(set(keys)) == 200 and lost == 0


def exchange(url: str, request: bytes, *, timeout: float = 30) -> bytes:
    """Send `request` whole over a new connection, as a client that reads only after it has written; return
    all the receiver answered until it closed the connection.

    Raises:
        OSError: the connection was reset (what an abrupt close does to a client still writing).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /hooks/hub HTTP/1.1\r\nhost: hooks\r\n" + headers + b"content-length: %d\r\n\r\n" % len(body) + body


@pytest.fixture
def url(watched: Registry) -> Iterator[str]:
    """The receiver, served with a 2 s read timeout and a 1000-byte body limit."""
    app = create_app(registry=watched, secret=SECRET, start_run=Starts(), max_body_bytes=1000, read_timeout_s=2)
    with serving(app, read_timeout_s=2) as served:
        yield served


def test_an_oversized_body_sent_whole_before_reading_gets_its_413(url: str) -> None:
    """A client that writes a 20 MB body it declared before it reads gets the 413 (it got a broken pipe when
    the receiver closed without reading), and nothing is recorded."""
    answer = exchange(url, post(b"x-webhook-secret: " + SECRET.encode() + b"\r\n", b"x" * 20_000_000))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"detail": "the body is larger than 1000 bytes."}


@pytest.mark.parametrize(
    "headers",
    [b"".join(b"x-h%d: v\r\n" % i for i in range(10_000)), b"x-big: " + b"y" * 1_000_000 + b"\r\n"],
    ids=["10000-headers", "one-1MB-header"],
)
def test_oversized_headers_are_431(url: str, headers: bytes) -> None:
    answer = exchange(url, post(headers))
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "detail": f"the request has more than {MAX_HEADERS} headers, or more than {MAX_HEADER_BYTES} bytes of them."
    }


def test_slow_clients_are_answered_408_and_let_go_while_others_are_served(url: str) -> None:
    """300 clients that send a head byte by byte and never finish are each answered 408 and disconnected
    after the read timeout (2 s; they were held for as long as they kept sending), and a delivery sent
    meanwhile is answered at once."""
    host, port = url.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(300)]
    began = time.monotonic()
    for sock in slow:
        sock.sendall(b"POST /hooks/hub HTTP/1.1\r\nhost: ")
    answer = exchange(
        url, post(b"x-webhook-secret: " + SECRET.encode() + b"\r\n", json.dumps(hub_payload(OLMO)).encode())
    )
    assert answer.startswith(b"HTTP/1.1 202 ")
    answers = []
    for sock in slow:
        with sock:
            answers.append(sock.recv(65536))
            while sock.recv(65536):
                pass
    held = time.monotonic() - began
    assert {a.split(b"\r\n", 1)[0] for a in answers} == {b"HTTP/1.1 408 Request Timeout"}
    assert held < 2 + 2 + 5  # the read timeout, the lingering close, and a loaded machine's slack


def test_a_body_sent_too_slowly_is_408(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /hooks/hub HTTP/1.1\r\nhost: h\r\nx-webhook-secret: "
            + SECRET.encode()
            + b"\r\ncontent-length: 500\r\n\r\n{"
        )
        answer = b""
        while not answer.endswith(b"}") and (chunk := sock.recv(65536)):  # the head and the body may come apart
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.endswith(b'{"detail":"the body was not received within 2 s; send it at once."}')
