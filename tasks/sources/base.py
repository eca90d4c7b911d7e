"""What every release source is: a frozen config model that says which Hub repos it watches, discovers its
releases, orders them, and names the model a track would train before any release is recorded."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from ...terms import ReleaseOrder

if TYPE_CHECKING:
    from ..hub.refs import ReleaseRef


class ReleaseSource(BaseModel):
    """A track's `source:`. Subclasses set `kind` (a `Literal` tag, the name a track's YAML gives) and `order`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    order: ClassVar[ReleaseOrder]
    """How the source orders its releases (`tasks.hub.release_facts` reads each one's place)."""

    def watches(self, *, repo_id: str, refs: Collection[str] | None = None) -> bool:
        """Whether a Hub event on `repo_id` (and `refs`, when given) may bring this source a release."""
        return False

    def ready(self) -> None:
        """Raise now what discovery would raise for a reason a person must fix before any run starts (a missing
        release directory); a source that needs the network to tell checks nothing here.

        Raises:
            ModelFolderError: as the source says.
        """

    def discover(self) -> list[ReleaseRef]:
        """The releases the source offers now.

        Raises:
            HubNotFoundError, HubUnavailableError, HubPermissionError, ModelFolderError: as the discovery reads.
        """
        raise NotImplementedError

    def resolved(self, base: Path) -> Self:
        """The source with its relative paths taken from `base` (the track file's folder)."""
        return self

    def newest_model(self) -> Path | tuple[str, str] | None:
        """Where the model of the source's newest release is before any release is recorded: a local folder,
        a Hub (repo, revision), or None when the source cannot tell."""
        return None

    def unknown_model(self) -> str:
        """What the source watches and that it knows no model yet, in words that follow "track NAME "."""
        return "knows no release yet"
