"""Discovering a track's releases: new repos of an author, new branches and tags of one repo (OLMo
style), or new sub-folders of a local release directory (each pinned by a content hash)."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from pathlib import Path

from huggingface_hub import HfApi

from ...errors import HubNotFoundError, ModelFolderError
from .refs import LOCAL_PREFIX, HubRef, ReleaseRef, model_files, natural_key, resolve
from .translate import hub_errors

_PARTIAL = re.compile(r"(\.partial|\.tmp|\.incomplete|\.lock)(-.*)?$")


def discover_repos(*, author: str, name_pattern: str | re.Pattern[str], api: HfApi | None = None) -> list[ReleaseRef]:
    """New repos of an author whose name matches a pattern, each pinned to its `main` commit.

    Args:
        author: the user or organisation on the Hub.
        name_pattern: a glob (`OLMo-2-*-1124`, matched case-sensitively against the name after the
            slash) or a compiled regular expression (which must match the whole name).
        api: the Hub client; by default one configured from the environment.

    Returns:
        The matching releases in natural order of their repo ids (`ref` is `main`). Repos without
        a `main` branch (still empty) are left out.

    Raises:
        HubNotFoundError: the author does not exist.
        HubUnavailableError: the Hub cannot be reached.
        HubPermissionError: the Hub refused the listing.
    """
    api = api or HfApi()
    with hub_errors(what=f"the models of {author!r}", endpoint=api.endpoint):
        repo_ids = [m.id for m in api.list_models(author=author)]
    matching = [r for r in repo_ids if _matches(name_pattern, r.split("/", 1)[-1])]
    releases = []
    for repo_id in sorted(matching, key=natural_key):
        try:
            releases.append(resolve(ref=HubRef(repo_id, "main"), api=api))
        except HubNotFoundError:
            continue  # created but not pushed to yet: not a release
    return releases


def discover_refs(*, repo_id: str, ref_pattern: str | re.Pattern[str], api: HfApi | None = None) -> list[ReleaseRef]:
    """Branches and tags of one repo whose name matches a pattern (OLMo style: `stage1-step*`).

    Args:
        repo_id: `org/name` on the Hub.
        ref_pattern: a glob matched case-sensitively against branch and tag names, or a compiled
            regular expression that must match the whole name.
        api: the Hub client; by default one configured from the environment.

    Returns:
        One release per matching name, pinned to the commit it points to, in natural order of the
        names (`step200` before `step1000`). A name that is both a branch and a tag is listed once,
        as the branch.

    Raises:
        HubNotFoundError: the repo does not exist (or is private and no valid token was given).
        HubUnavailableError: the Hub cannot be reached.
        HubPermissionError: the Hub refused the request.
    """
    api = api or HfApi()
    with hub_errors(what=f"the branches and tags of {repo_id}", endpoint=api.endpoint):
        refs = api.list_repo_refs(repo_id)
    found: dict[str, str] = {}
    for info in [*refs.branches, *refs.tags]:
        if info.name not in found and _matches(ref_pattern, info.name):
            found[info.name] = info.target_commit
    return [ReleaseRef(repo_id=repo_id, revision=found[n], ref=n) for n in sorted(found, key=natural_key)]


def release_root(release_dir: Path) -> Path:
    """The release directory, resolved.

    Raises:
        ModelFolderError: it is not a directory.
    """
    root = Path(release_dir).expanduser().resolve()
    if not root.is_dir():
        raise ModelFolderError(
            f"Release directory {root} does not exist; create it or fix the track's release_dir.", path=root
        )
    return root


def discover_local(*, release_dir: Path) -> list[ReleaseRef]:
    """Each complete model sub-folder of a local release directory, as a release.

    A sub-folder counts when it holds `config.json` and safetensors weights; hidden folders
    (`.name`, which includes Graftwork's own `.name.partial-*` outputs) and folders named like
    partial downloads (`*.partial`, `*.tmp`, `*.incomplete`) are ignored. The revision is a content
    hash (40 hex characters) of the folder's model files, so it changes exactly when they change.

    Args:
        release_dir: the release directory.

    Returns:
        Releases with `repo_id` `local:<release_dir>`, `ref` the sub-folder name and `path` the
        sub-folder, in natural order of the names.

    Raises:
        ModelFolderError: `release_dir` is not a directory.
    """
    root = release_root(release_dir)
    releases = []
    for sub in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if not sub.is_dir() or sub.name.startswith((".", "_")) or _PARTIAL.search(sub.name):
            continue
        files = model_files(sub)
        if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
            continue
        revision = content_revision(sub)
        releases.append(ReleaseRef(repo_id=f"{LOCAL_PREFIX}{root}", revision=revision, ref=sub.name, path=sub))
    return releases


def content_revision(folder: Path) -> str:
    """A 40-hex-character hash of a folder's model files (names and sha256 of each), for local releases."""
    h = hashlib.sha256()
    for name, path in sorted(model_files(folder).items()):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()[:40]


def _matches(pattern: str | re.Pattern[str], name: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, pattern)
