"""The webhook receiver's HTTP front: uvicorn's h11 protocol with the limits a server on the Internet needs.

| what a client does | what it gets |
| --- | --- |
| headers larger than `MAX_HEADER_BYTES` in all, or more than `MAX_HEADERS` of them | 431, then it closes |
| a head not finished within `read_timeout_s` of connecting, or of the previous answer | 408, then it closes |
| a body not finished within the app's read timeout | 408 (`webhook.create_app`) |
| more than `MAX_CONNECTIONS` connections at once | 503 |

Every close is a lingering one: the receiver answers, closes its side, and reads and drops what the client
still sends for up to `linger_s` before it closes the connection. A client that is still writing a body it was
refused (an oversized one) then reads the answer, instead of the reset that an abrupt close sends it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16_384
MAX_HEADERS = 100
MAX_CONNECTIONS = 512
STATUS_TEXT = {
    408: ("Request Timeout", "the request was not received in time; send it at once."),
    431: (
        "Request Header Fields Too Large",
        f"the request has more than {MAX_HEADERS} headers, or more than {MAX_HEADER_BYTES} bytes of them.",
    ),
}


class _Connection(h11.Connection):
    """h11's connection, keeping the last protocol error it raised (its status hint tells 431 from 400)."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.last_error = e
            raise


class _LingeringTransport:
    """A transport whose `close` lingers: it sends what is buffered, closes the writing side, then reads and
    drops what arrives until the client closes too, or `linger_s` passes."""

    def __init__(self, transport: asyncio.Transport, *, protocol: GuardedProtocol, linger_s: float) -> None:
        self._transport, self._protocol, self._linger_s = transport, protocol, linger_s
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._protocol.lingering = True
        if self._transport.is_closing() or not self._transport.can_write_eof():
            self._transport.close()
            return
        self._transport.write_eof()
        self._transport.resume_reading()
        asyncio.get_running_loop().call_later(self._linger_s, self._transport.close)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a read deadline for each request's head, 431 for oversized headers, and
    lingering closes. Configured by `guarded_protocol`."""

    read_timeout_s = 10.0
    linger_s = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h11 = _Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.conn = self._h11
        self.lingering = False
        self._deadline: asyncio.TimerHandle | None = None
        self._answered: object = None  # the cycle answered last: a request newer than it is one being received

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, protocol=self, linger_s=self.linger_s))  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._answered:
            self._disarm()  # the head is in: the body's time is the app's to bound

    def on_response_complete(self) -> None:
        answered = self._answered = self.cycle
        super().on_response_complete()  # may start a pipelined request's cycle: its head is in, nothing to time
        if self.cycle is answered and not self.transport.is_closing():
            self._arm()

    def send_400_response(self, msg: str) -> None:
        error = self._h11.last_error
        status = error.error_status_hint if error is not None else 400
        self._answer(status, STATUS_TEXT[status][1] if status in STATUS_TEXT else msg)

    def _answer(self, status: int, detail: str) -> None:
        reason = STATUS_TEXT.get(status, ("Bad Request", ""))[0].encode()
        body = json.dumps({"detail": detail}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        head.append((b"connection", b"close"))
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason), *(b"%s: %s\r\n" % pair for pair in head), b"\r\n"]
        self.transport.write(b"".join(lines) + body)
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a request's head
            self._answer(408, STATUS_TEXT[408][1])
        else:
            self.transport.close()  # idle, or still sending a body already answered: nothing to answer


class HeaderLimit:
    """ASGI middleware: 431 for a request whose head h11 read in one piece but that has more than `MAX_HEADERS`
    headers or `MAX_HEADER_BYTES` of them (h11 bounds only a head that arrives in pieces)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = scope.get("headers", ()) if scope["type"] == "http" else ()
        if len(headers) <= MAX_HEADERS and sum(len(k) + len(v) + 4 for k, v in headers) <= MAX_HEADER_BYTES:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": STATUS_TEXT[431][1]}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        head.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 431, "headers": head})
        await send({"type": "http.response.body", "body": body})


def guarded_protocol(*, read_timeout_s: float, linger_s: float = 2.0) -> type[GuardedProtocol]:
    """`GuardedProtocol` with these timeouts, for uvicorn's `http=` setting."""
    return type("GuardedProtocol", (GuardedProtocol,), {"read_timeout_s": read_timeout_s, "linger_s": linger_s})


def server(app: Any, *, host: str, port: int, read_timeout_s: float = 10.0, **config: Any) -> uvicorn.Server:
    """A uvicorn server for the receiver `app` on `host:port`, with the guarded protocol; `config` goes to
    `uvicorn.Config` as it is (log settings)."""
    return uvicorn.Server(
        uvicorn.Config(
            HeaderLimit(app),
            host=host,
            port=port,
            http=guarded_protocol(read_timeout_s=read_timeout_s),
            limit_concurrency=MAX_CONNECTIONS,
            **config,
        )
    )
