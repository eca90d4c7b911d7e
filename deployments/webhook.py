"""The Hub webhook receiver: a FastAPI app that records each delivery in the registry's outbox, answers at once,
and starts the watchers of the tracks it concerns from the outbox (`outbox.Drainer`), after the answer.

| request | response |
| --- | --- |
| `POST /hooks/hub`, missing or wrong `X-Webhook-Secret` | 401 |
| body larger than `max_body_bytes` (declared or sent) | 413 (the body is not kept past the limit) |
| body not sent within `read_timeout_s` | 408 |
| body not JSON, or not a Hub webhook payload | 422, with the reason |
| no track watches the repo (or not a model repo, or an event that brings no release) | 202 `ignored` |
| recorded for the tracks that watch the repo: their runs start from the outbox | 202 `queued`, with the tracks |
| a delivery recorded before | 200 `duplicate` |
| the database failed, or no record within `answer_within_s` (it may be still), or the receiver stops | 503: redeliver |
| `GET /healthz` | 200 with the outbox's backlog, or 503 when the database cannot be reached |
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import DatabaseError, RecorderStoppedError, WebhookPayloadError, WebhookSecretError
from ..storage import Registry, deliveries
from .deliveries import Outcome, StartRun, receiver_session, start_watcher
from .hub_events import HubEvent
from .outbox import Drainer
from .recorder import MAX_BATCH, Recorder

SECRET_HEADER = "X-Webhook-Secret"
STATUS_CODES = {"queued": 202, "ignored": 202, "duplicate": 200}
log = logging.getLogger("graftwork.webhook")


def create_app(
    *,
    registry: Registry,
    secret: str,
    start_run: StartRun = start_watcher,
    max_body_bytes: int = 1_000_000,
    read_timeout_s: float = 10.0,
    answer_within_s: float = 5.0,
    poll_s: float = 2.0,
    max_batch: int = MAX_BATCH,
) -> FastAPI:
    """The webhook receiver for `registry`, accepting deliveries that carry `secret`. While the app runs (its
    lifespan), a `Drainer` starts the recorded deliveries' runs with `start_run(track, idempotency_key)` (by
    default the track's watcher deployment), polling every `poll_s` seconds besides each new delivery, and a
    `Recorder` records the deliveries, up to `max_batch` of those waiting in one transaction.

    Raises:
        WebhookSecretError: `secret` is empty.
    """
    if not secret:
        raise WebhookSecretError(
            "the webhook receiver needs a secret: set the same secret in the webhook's settings on the Hub "
            "and in GRAFT_WEBHOOK_SECRET."
        )
    expected = secret.encode()
    drainer = Drainer(registry, start_run=start_run, poll_s=poll_s)
    recorder = Recorder(registry, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        recorder.start()
        try:
            drainer.start()
            yield
        finally:
            await run_in_threadpool(recorder.stop)
            await run_in_threadpool(drainer.stop)

    app = FastAPI(title="Graftwork Hub webhooks", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.post("/hooks/hub")
    async def hub_delivery(request: Request) -> JSONResponse:
        given = request.headers.get(SECRET_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            return _error(401, f"missing or wrong {SECRET_HEADER} header; send the secret this receiver was given.")
        try:
            async with asyncio.timeout(read_timeout_s):
                body = await _read_body(request, limit=max_body_bytes)
        except TimeoutError:
            return _error(408, f"the body was not received within {read_timeout_s:g} s; send it at once.")
        if body is None:
            return _error(413, f"the body is larger than {max_body_bytes} bytes.")
        try:
            event = HubEvent.from_json(body)
        except WebhookPayloadError as e:
            return _error(422, str(e))
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(recorder.submit(event)), timeout=answer_within_s)
        except DatabaseError as e:  # nothing of it kept: the Hub's redelivery tries again
            log.error("delivery for %s: %s", event.repo_id, e)
            return _error(503, str(e))
        except RecorderStoppedError as e:
            log.error("delivery for %s: %s", event.repo_id, e)
            return _error(503, "the receiver is stopping and did not record the delivery; redeliver it.")
        except TimeoutError:
            log.error("delivery for %s: not recorded within %g s (it may be still)", event.repo_id, answer_within_s)
            return _error(
                503,
                f"the registry did not record the delivery within {answer_within_s:g} s; redeliver it "
                "(a delivery recorded twice starts one run).",
            )
        if outcome.status == "queued":
            drainer.wake()
        log.info("delivery %s for %s: %s (%s)", outcome.key[:12], event.repo_id, outcome.status, _what(outcome))
        return JSONResponse(
            {"status": outcome.status, "key": outcome.key, "tracks": list(outcome.tracks), "reason": outcome.reason},
            status_code=STATUS_CODES[outcome.status],
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with receiver_session(registry) as session:
                backlog = deliveries.backlog(session)
        except DatabaseError as e:
            log.error("health check: %s", e)
            return JSONResponse({"status": "error", "detail": "the registry database cannot be reached"}, 503)
        return JSONResponse({"status": "ok", "outbox": asdict(backlog)})

    return app


async def _read_body(request: Request, *, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to be larger than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _what(outcome: Outcome) -> str:
    return outcome.reason or ", ".join(outcome.tracks)
