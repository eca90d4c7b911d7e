"""Which Prefect API a Graftwork command talks to, and whether it answers as the one it should.

`PREFECT_API_URL` when it is set (the compose stack, production); else the data dir's own server as recorded in
`DATA_DIR/prefect/server.json` while it runs; else the address the settings give (`GRAFT_PREFECT_HOST`,
`GRAFT_PREFECT_PORT`: 127.0.0.1:4200). The basic-auth string is `PREFECT_API_AUTH_STRING`. `local_server` starts
and stops the data dir's server; this module only finds it, checks it and points Prefect's clients at it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import LocalPrefectError
from ..fs import process_alive
from ..operations.settings import GraftSettings

RECORD = "server.json"


@dataclass(frozen=True)
class Endpoint:
    """The Prefect API a command talks to: its URL, the basic-auth string it sends, and, for the data dir's own
    server, that server's Prefect home (None for a server `PREFECT_API_URL` names)."""

    api_url: str
    auth: str | None
    home: Path | None

    @property
    def ui_url(self) -> str:
        """Where a person opens the Prefect UI of this API."""
        return self.api_url.removesuffix("/").removesuffix("/api")

    @property
    def explicit(self) -> bool:
        """Whether `PREFECT_API_URL` named this server."""
        return self.home is None


def prefect_home(settings: GraftSettings) -> Path:
    """The data dir's Prefect home: the server's database (`prefect.db`), its log and its record."""
    return settings.data_dir.expanduser().resolve() / "prefect"


def auth_string() -> str | None:
    """The basic-auth string in effect: `PREFECT_API_AUTH_STRING` (or the server's own setting)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_SERVER_API_AUTH_STRING

    value = PREFECT_API_AUTH_STRING.value() or PREFECT_SERVER_API_AUTH_STRING.value()
    return str(value) if value else None


def endpoint(settings: GraftSettings, *, own: bool = False) -> Endpoint:
    """The Prefect API this command talks to: `PREFECT_API_URL` (unless `own`), else the data dir's server as
    recorded while it runs, else at the settings' address."""
    from prefect.settings import PREFECT_API_URL

    if not own and PREFECT_API_URL.value():
        return Endpoint(api_url=str(PREFECT_API_URL.value()), auth=auth_string(), home=None)
    home = prefect_home(settings)
    recorded = _recorded(home)
    url = recorded or api_url(host=settings.prefect_host, port=settings.prefect_port)
    return Endpoint(api_url=url, auth=auth_string(), home=home)


def api_url(*, host: str, port: int) -> str:
    """The API URL of a server bound to `host`:`port`, as a client on this machine reaches it."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/api"


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(target: Endpoint) -> bool:
    """Whether the server of `target` answers (False: nothing listens there).

    Raises:
        LocalPrefectError: something answers that is not a Prefect server, or another data dir's Prefect server,
            or the server refuses the auth string (or asks for one that is not set).
    """
    headers = _auth_headers(target.auth)
    with httpx.Client(timeout=5.0, headers=headers) as client:
        try:
            health = client.get(f"{target.api_url}/health")
        except httpx.ConnectError:
            return False
        except httpx.HTTPError as e:
            raise _not_prefect(target, f"{type(e).__name__}: {e}") from None
        if health.status_code != 200 or health.text.strip() != "true":
            raise _not_prefect(target, f"GET /api/health answered {health.status_code}")
        settings = client.get(f"{target.api_url}/admin/settings")
    if settings.status_code == 401:
        raise _refused(target)
    if settings.status_code != 200:
        raise _not_prefect(target, f"GET /api/admin/settings answered {settings.status_code}")
    home = Path(str(settings.json().get("home", ""))).expanduser()
    if target.home is not None and home.resolve() != target.home:
        raise LocalPrefectError(
            f"{target.ui_url} is another Prefect server (its home is {home}, this data dir's is {target.home}); "
            "stop it, or give this data dir its own port with GRAFT_PREFECT_PORT.",
            path=target.home,
        )
    return True


def require(target: Endpoint) -> None:
    """Check that the server of `target` runs.

    Raises:
        LocalPrefectError: nothing answers there (the message says how to start it), or `check` refuses it.
    """
    if check(target):
        return
    if target.explicit:
        fix = "(PREFECT_API_URL): start it, or unset PREFECT_API_URL to use this data dir's own"
    else:
        fix = "(this data dir's server): start it with `graft serve` or `graft ui`, or set PREFECT_API_URL"
    raise LocalPrefectError(f"no Prefect server answers at {target.api_url} {fix}.", path=target.home)


@contextmanager
def connected(target: Endpoint) -> Iterator[Endpoint]:
    """Point Prefect's clients in this process (and the processes it starts) at `target` for the block."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_HOME, temporary_settings

    updates: dict[object, object] = {PREFECT_API_URL: target.api_url}
    if target.auth:
        updates[PREFECT_API_AUTH_STRING] = target.auth
    if target.home is not None:
        updates[PREFECT_HOME] = target.home
    with temporary_settings(updates=updates):
        try:
            yield target
        finally:
            send_pending()


def environment(target: Endpoint, *, settings: GraftSettings) -> dict[str, str]:
    """The environment of a Prefect process this command starts: pointed at `target`, on the settings' data dir."""
    env = settings.child_environment(PREFECT_API_URL=target.api_url)
    if target.auth:
        env["PREFECT_API_AUTH_STRING"] = target.auth
    if target.home is not None:
        env["PREFECT_HOME"] = str(target.home)
    return env


def _recorded(home: Path) -> str | None:
    """The API URL recorded by the data dir's running server, if it runs and the command that started it too."""
    record = read_record(home)
    if record is None or not (process_alive(record["pid"]) and process_alive(record["owner"])):
        return None
    return str(record["api_url"])


def read_record(home: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((home / RECORD).read_text())
        return {"api_url": str(record["api_url"]), "pid": int(record["pid"]), "owner": int(record["owner"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def send_pending() -> None:
    """Send the run logs and events Prefect still holds: left for Prefect's exit hook, they would meet a stopped
    server ("Error logging to API") or none at all."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def _auth_headers(auth: str | None) -> dict[str, str]:
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _not_prefect(target: Endpoint, why: str) -> LocalPrefectError:
    return LocalPrefectError(
        f"{target.ui_url} is taken by something that is not a Prefect server ({why}); stop it, or set "
        "GRAFT_PREFECT_PORT to a free port.",
        path=target.home,
    )


def _refused(target: Endpoint) -> LocalPrefectError:
    what = "refused the auth string PREFECT_API_AUTH_STRING gives" if target.auth else "requires an auth string"
    return LocalPrefectError(
        f"the Prefect server at {target.api_url} {what} (401); set PREFECT_API_AUTH_STRING to the server's.",
        path=target.home,
    )
