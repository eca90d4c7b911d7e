"""huggingface_hub's errors translated into Graftwork's: each names what failed and where, hints the
fix, and never shows the token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ...errors import HubNotFoundError, HubPermissionError, HubUnavailableError


@contextmanager
def hub_errors(*, what: str, endpoint: str, token: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's errors into Graftwork's, naming `what` and the endpoint, never the token."""
    try:
        yield
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise HubNotFoundError(
            _scrub(
                f"{what} was not found on the Hub at {endpoint} ({_status(exc)}). Check the repo id and the "
                "branch/tag/sha; for a private or gated repo, set HF_TOKEN to a token that can read it.",
                token,
            ),
            ref=what,
        ) from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx2.TransportError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)):
            raise HubNotFoundError(
                _scrub(f"{what} was not found on the Hub at {endpoint} ({_status(cause)}). Check the sha.", token),
                ref=what,
            ) from None
        offline = constants.is_offline_mode() or isinstance(cause or exc, OfflineModeIsEnabled)
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local cache: unset HF_HUB_OFFLINE to download it."
            if offline
            else "the Hub cannot be reached and it is not (fully) in the local cache: check the network and "
            "HF_ENDPOINT, then try again."
        )
        raise HubUnavailableError(_scrub(f"Cannot get {what} from {endpoint}: {hint}", token), ref=what) from None
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            raise HubPermissionError(
                _scrub(
                    f"The Hub at {endpoint} refused access to {what} (HTTP {code}). Set HF_TOKEN (or pass a token) "
                    "that can read it, or write to it when publishing.",
                    token,
                ),
                ref=what,
            ) from None
        if code == 404:
            raise HubNotFoundError(
                _scrub(f"{what} was not found on the Hub at {endpoint} (HTTP 404).", token),
                ref=what,
            ) from None
        raise HubUnavailableError(
            _scrub(f"The Hub at {endpoint} failed on {what} (HTTP {code}); try again later.", token),
            ref=what,
        ) from None
    except (ConnectionError, TimeoutError) as exc:
        raise HubUnavailableError(
            _scrub(f"Cannot reach the Hub at {endpoint} for {what} ({type(exc).__name__}); check HF_ENDPOINT.", token),
            ref=what,
        ) from None


def _status(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message
