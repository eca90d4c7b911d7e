"""Release sources, looked up by the `kind` a track's YAML names: `Source` is the registry, one member per module
of this package. A new source is one module (a `ReleaseSource` with its `kind`, `order`, `discover` and, for Hub
webhooks, `watches`) and one member of `Source`; the watcher, the webhook and `graft plan` ask it, never its
class."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ReleaseSource
from .hub_refs import HubRefsSource
from .hub_repos import HubReposSource
from .local import LocalSource

Source = Annotated[LocalSource | HubReposSource | HubRefsSource, Field(discriminator="kind")]

__all__ = ["HubRefsSource", "HubReposSource", "LocalSource", "ReleaseSource", "Source"]
