"""What a watcher needs to know of a release beyond its pin: its place in its source's order, and a key
of the model files it holds, so that a commit that changes none of them (a README edit) is not a release.

| source | position (sorts as the source orders its releases) | content key |
| --- | --- | --- |
| local folder | its name, digit runs by value (`step200` before `step1000`) | its revision (hash of its model files) |
| Hub ref | the time of the commit the ref points to | the Hub's sha256 (LFS) or blob id of each model file |
| Hub repo | the repo's creation time, then the commit's time | as for a ref |
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass

from huggingface_hub import HfApi
from huggingface_hub.hf_api import RepoFile

from ...terms import ReleaseOrder
from .refs import MODEL_PATTERNS, ReleaseRef
from .translate import hub_errors


@dataclass(frozen=True)
class ReleaseFacts:
    """A release's position in its source's order and the key of its model files."""

    position: str
    content_key: str


def release_facts(*, release: ReleaseRef, order: ReleaseOrder, api: HfApi | None = None) -> ReleaseFacts:
    """The position and content key of `release` (one or two Hub requests for a Hub release).

    Raises:
        HubNotFoundError, HubUnavailableError, HubPermissionError: the Hub refused or cannot be reached.
    """
    if release.path is not None:  # a local release's revision is the hash of its model files already
        return ReleaseFacts(position=natural_position(release.ref or release.path.name), content_key=release.revision)
    api = api or HfApi()
    where = f"{release.repo_id}@{release.revision}"
    with hub_errors(what=where, endpoint=api.endpoint):
        info = api.model_info(release.repo_id, revision=release.revision)
        tree = list(api.list_repo_tree(release.repo_id, revision=release.revision, recursive=True))
    committed = info.last_modified.isoformat() if info.last_modified else ""
    created = info.created_at.isoformat() if info.created_at else ""
    position = f"{created}|{committed}" if order is ReleaseOrder.CREATED else committed
    digest = hashlib.sha256()
    for entry in sorted((e for e in tree if isinstance(e, RepoFile) and _model_file(e.path)), key=lambda e: e.path):
        digest.update(f"{entry.path}\0{entry.lfs.sha256 if entry.lfs else entry.blob_id}\n".encode())
    return ReleaseFacts(position=position, content_key=digest.hexdigest())


def natural_position(name: str) -> str:
    """A string that sorts names by their digit runs' values: `step200` before `step1000`."""
    return re.sub(r"\d+", lambda m: m.group().zfill(20), name)


def _model_file(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in MODEL_PATTERNS)
