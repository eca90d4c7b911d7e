"""The `local` source: each sub-folder of a directory is a release, ordered by its name (`01-M1`, `02-M2`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from ...terms import ReleaseOrder
from .base import ReleaseSource

if TYPE_CHECKING:
    from ..hub.refs import ReleaseRef


class LocalSource(ReleaseSource):
    """Releases are the sub-folders of a local directory."""

    kind: Literal["local"]
    release_dir: Path

    order: ClassVar[ReleaseOrder] = ReleaseOrder.FOLDER

    def ready(self) -> None:
        """That the release directory exists.

        Raises:
            ModelFolderError: it does not.
        """
        from ..hub.discover import release_root

        release_root(self.release_dir)

    def discover(self) -> list[ReleaseRef]:
        """The model folders under `release_dir`, each pinned by a hash of its content.

        Raises:
            ModelFolderError: the release directory is missing.
        """
        from ..hub.discover import discover_local

        return discover_local(release_dir=self.release_dir)

    def resolved(self, base: Path) -> Self:
        """The source with `release_dir` taken from `base` when it is relative (and `~` expanded)."""
        return self.model_copy(update={"release_dir": base / self.release_dir.expanduser()})

    def newest_model(self) -> Path | None:
        """The last model folder of `release_dir` in name order (hidden and `_` folders left out), if any."""
        from ..hub.refs import natural_key

        folders = [p.parent for p in self.release_dir.glob("*/config.json") if not p.parent.name.startswith((".", "_"))]
        return max(folders, key=lambda p: natural_key(p.name), default=None)

    def unknown_model(self) -> str:
        """That the release directory holds no model folder yet."""
        return f"watches {self.release_dir}, which holds no model folder yet"
