"""`graft webhook`: serve the Hub webhook receiver."""

from __future__ import annotations

import copy
import logging
from typing import Annotated, Any

import typer

from ..operations.settings import Workspace
from .console import err, say, user_errors
from .console import settings as console_settings


def webhook(
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port to listen on.")] = 8000,
) -> None:
    """Receive Hub webhooks at POST /hooks/hub: each delivery is recorded and answered at once, and the watchers
    of the tracks it concerns are started from the record (retried until they start, exactly once, also across
    restarts), on the Prefect server PREFECT_API_URL names, else on the data dir's (`graft serve` serves the
    watcher deployment there).

    Needs GRAFT_WEBHOOK_SECRET, the secret set in the webhook's settings on the Hub (it refuses to start
    without one), and the Prefect server running."""
    from .prefect_api import connected, endpoint, require
    from .webhook import create_app
    from .webhook_http import server

    settings = console_settings()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        err.print(
            "[bold red]error:[/] GRAFT_WEBHOOK_SECRET is not set, and the receiver refuses to accept "
            "unauthenticated deliveries. Choose a secret (e.g. `openssl rand -hex 32`), set it in the "
            "webhook's settings on the Hub and export it as GRAFT_WEBHOOK_SECRET.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    with user_errors():
        target = endpoint(settings)
        require(target)
        app = create_app(registry=Workspace.from_settings(settings).registry(), secret=secret)
    say(f"receiving Hub webhooks at http://{host}:{port}/hooks/hub (health: /healthz); runs start on {target.api_url}")
    with connected(target):
        server(app, host=host, port=port, log_level="info", log_config=access_log_config()).run()


class NoQueryStrings(logging.Filter):
    """Drops the query string from uvicorn's access-log lines: a secret sent in one (the receiver reads it
    only from its header, and refuses the request) must never reach a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


def access_log_config() -> dict[str, Any]:
    """uvicorn's own logging config, with `NoQueryStrings` on its access log and the receiver's log lines."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"no_query_strings": {"()": NoQueryStrings}}
    config["loggers"]["uvicorn.access"]["filters"] = ["no_query_strings"]
    # the receiver's own lines (each delivery, each run started or try failed) beside uvicorn's: Prefect's logging
    # set-up owns the root logger by now, at WARNING
    config["loggers"]["graftwork"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
