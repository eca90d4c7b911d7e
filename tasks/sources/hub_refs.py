"""The `hub-refs` source: the branches and tags of one Hub repo that match a pattern (`stage1-step*`, OLMo
style), ordered by commit time."""

from __future__ import annotations

from collections.abc import Collection
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, ClassVar, Literal

from ...terms import ReleaseOrder
from .base import ReleaseSource

if TYPE_CHECKING:
    from ..hub.refs import ReleaseRef

BRANCH_AND_TAG_PREFIXES = ("refs/heads/", "refs/tags/")
"""How the Hub names the refs that can hold a release; pull requests (`refs/pr/*`) and others cannot."""


class HubRefsSource(ReleaseSource):
    """Releases are the branches and tags of one Hub repo that match a pattern (`stage1-step*`)."""

    kind: Literal["hub-refs"]
    repo: str
    ref_pattern: str

    order: ClassVar[ReleaseOrder] = ReleaseOrder.COMMIT

    def watches(self, *, repo_id: str, refs: Collection[str] | None = None) -> bool:
        """Whether `repo_id` is the repo, and (when `refs` are given) one of them, a branch or tag name with
        or without `refs/heads/` or `refs/tags/`, matches the glob."""
        if repo_id != self.repo:
            return False
        return refs is None or any(fnmatchcase(short_ref(ref), self.ref_pattern) for ref in refs)

    def discover(self) -> list[ReleaseRef]:
        """The repo's branches and tags whose names match, each at its commit.

        Raises:
            HubNotFoundError, HubUnavailableError, HubPermissionError: the repo cannot be read.
        """
        from ..hub.discover import discover_refs

        return discover_refs(repo_id=self.repo, ref_pattern=self.ref_pattern)

    def newest_model(self) -> tuple[str, str]:
        """The repo's `main`."""
        return self.repo, "main"


def short_ref(ref: str) -> str:
    """A branch or tag name without its `refs/heads/` or `refs/tags/` prefix."""
    for prefix in BRANCH_AND_TAG_PREFIXES:
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    return ref
