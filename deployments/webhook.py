"""The Hub webhook receiver: a FastAPI app that starts the watchers of the tracks a delivery concerns.

| request | response |
| --- | --- |
| `POST /hooks/hub`, missing or wrong `X-Webhook-Secret` | 401 |
| body larger than `max_body_bytes` | 413 (the body is not read past the limit) |
| body not JSON, or not a Hub webhook payload | 422, with the reason |
| no track watches the repo (or not a model repo, or an event that brings no release) | 202 `ignored` |
| runs started for the tracks that watch the repo | 200 `started`, with the tracks |
| a delivery seen before | 200 `duplicate` |
| a run could not be started, or the database failed | 503 (nothing recorded: a redelivery tries again) |
| `GET /healthz` | 200 `{"status": "ok"}`, or 503 when the database cannot be reached |
"""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import DatabaseError, RunStartError, WebhookPayloadError, WebhookSecretError
from ..storage import Registry
from ..storage.db import current_revision
from .deliveries import Outcome, StartRun, handle_delivery, start_watcher
from .hub_events import HubEvent

SECRET_HEADER = "X-Webhook-Secret"
log = logging.getLogger("graftwork.webhook")


def create_app(
    *, registry: Registry, secret: str, start_run: StartRun = start_watcher, max_body_bytes: int = 1_000_000
) -> FastAPI:
    """The webhook receiver for `registry`, accepting deliveries that carry `secret`.

    `start_run(track, idempotency_key)` starts a track's run (by default its watcher deployment).

    Raises:
        WebhookSecretError: `secret` is empty.
    """
    if not secret:
        raise WebhookSecretError(
            "the webhook receiver needs a secret: set the same secret in the webhook's settings on the Hub "
            "and in GRAFT_WEBHOOK_SECRET."
        )
    expected = secret.encode()
    app = FastAPI(title="Graftwork Hub webhooks", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/hooks/hub")
    async def hub_delivery(request: Request) -> JSONResponse:
        given = request.headers.get(SECRET_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            return _error(401, f"missing or wrong {SECRET_HEADER} header; send the secret this receiver was given.")
        body = await _read_body(request, limit=max_body_bytes)
        if body is None:
            return _error(413, f"the body is larger than {max_body_bytes} bytes.")
        try:
            event = HubEvent.from_json(body)
        except WebhookPayloadError as e:
            return _error(422, str(e))
        try:
            outcome = await run_in_threadpool(handle_delivery, registry, event=event, start_run=start_run)
        except (RunStartError, DatabaseError) as e:  # nothing of it kept: the Hub's redelivery tries again
            log.error("delivery for %s: %s", event.repo_id, e)
            return _error(503, str(e))
        log.info("delivery %s for %s: %s (%s)", outcome.key[:12], event.repo_id, outcome.status, _what(outcome))
        return JSONResponse(
            {"status": outcome.status, "key": outcome.key, "tracks": list(outcome.tracks), "reason": outcome.reason},
            status_code=202 if outcome.status == "ignored" else 200,
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            current_revision(registry.engine)
        except DatabaseError as e:
            log.error("health check: %s", e)
            return JSONResponse({"status": "error", "detail": "the registry database cannot be reached"}, 503)
        return JSONResponse({"status": "ok"})

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
