"""The `hub-repos` source: new Hub repos of an author whose names match a pattern (`Llama-3.*-8B`), ordered by
creation time."""

from __future__ import annotations

from collections.abc import Collection
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, ClassVar, Literal

from ...terms import ReleaseOrder
from .base import ReleaseSource

if TYPE_CHECKING:
    from ..hub.refs import ReleaseRef


class HubReposSource(ReleaseSource):
    """Releases are new Hub repos of an author whose names match a pattern (`Llama-3.*-8B`)."""

    kind: Literal["hub-repos"]
    author: str
    name_pattern: str

    order: ClassVar[ReleaseOrder] = ReleaseOrder.CREATED

    def watches(self, *, repo_id: str, refs: Collection[str] | None = None) -> bool:
        """Whether `repo_id` is a repo of the author whose name (after the slash) matches the glob."""
        author, _, name = repo_id.partition("/")
        return author == self.author and fnmatchcase(name, self.name_pattern)

    def discover(self) -> list[ReleaseRef]:
        """The author's repos whose names match, each at its `main` commit.

        Raises:
            HubUnavailableError, HubPermissionError: the Hub cannot be asked.
        """
        from ..hub.discover import discover_repos

        return discover_repos(author=self.author, name_pattern=self.name_pattern)

    def unknown_model(self) -> str:
        """That the source knows no repo to read a model from."""
        return f"watches Hub repos of {self.author} named {self.name_pattern!r} and knows no release yet"
