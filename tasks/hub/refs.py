"""Hub references: a release pinned to its commit sha, a model as a user names it, and pinning one.

A release is a repo id plus a pinned 40-character revision; `resolve` pins a branch, tag or short sha,
falling back on the local cache when the Hub cannot be reached.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ...errors import HubNotFoundError, HubUnavailableError, ModelRefError
from ..io.layout import GENERATION_CONFIG, TOKENIZER_FILES
from .translate import hub_errors

#: What a release download fetches: weights as safetensors, config, generation config, tokenizer.
MODEL_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    GENERATION_CONFIG,
    *TOKENIZER_FILES,
)
#: What `publish` uploads: the model files and a model card.
PUBLISH_PATTERNS: tuple[str, ...] = (*MODEL_PATTERNS, "README.md")
LOCAL_PREFIX = "local:"
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")


@dataclass(frozen=True)
class ReleaseRef:
    """One base-model release: `repo_id` pinned to a 40-character `revision`.

    Attributes:
        repo_id: `org/name` on the Hub, or `local:<release dir>` for a local release directory.
        revision: the commit sha on the Hub; for a local release, a content hash of its model files.
        ref: the branch or tag the revision was found under (the sub-folder name for a local
            release), or None when the release was given by its sha.
        path: the release folder, for local releases only.
    """

    repo_id: str
    revision: str
    ref: str | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        if not FULL_SHA.match(self.revision):
            raise ModelRefError(
                f"Release {self.repo_id}@{self.revision} is not pinned: a release needs the full 40-character "
                "commit sha. Resolve the branch or tag first with tasks.hub.resolve.",
                ref=f"{self.repo_id}@{self.revision}",
            )

    def __str__(self) -> str:
        at = f"{self.ref} = {self.revision[:12]}" if self.ref else self.revision
        return f"{self.repo_id}@{at}"


class HubRef(NamedTuple):
    """A model on the Hub as a user names it: repo id and a branch, tag or (short) sha, not yet pinned."""

    repo_id: str
    revision: str = "main"


def parse_model_ref(text: str | Path) -> Path | HubRef:
    """Read a model argument of the command line: a local folder, or `org/name[@revision]` on the Hub.

    An existing local path always wins. Otherwise `org/name@rev` and `name@rev` name a model on the
    Hub, and `org/name` means `org/name@main`; anything else is taken as a local path (so that a
    missing folder gets the usual "not a model folder" error).

    Raises:
        ModelRefError: the text has an `@` but the repo id or the revision is malformed.
    """
    text = str(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    repo_id, at, revision = text.partition("@")
    if at:
        if not revision.strip():
            raise ModelRefError(
                f"{text!r} names no revision after '@'; write e.g. {repo_id}@main or {repo_id}@<sha>.", ref=text
            )
        _check_repo_id(repo_id, text)
        return HubRef(repo_id, revision)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            validate_repo_id(text)
        except HFValidationError:
            return path
        return HubRef(text, "main")
    return path


def _check_repo_id(repo_id: str, text: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ModelRefError(
            f"{text!r}: {repo_id!r} is not a Hub repo id ({exc}). Write org/name@revision.", ref=text
        ) from None


def resolve(*, ref: HubRef | str, cache_dir: Path | None = None, api: HfApi | None = None) -> ReleaseRef:
    """Pin a branch, tag or short sha to the full 40-character commit sha.

    A full sha is already pinned and is returned without asking the Hub. When the Hub cannot be
    reached (or `HF_HUB_OFFLINE` is set), a branch or tag downloaded before is resolved from the
    local cache, as huggingface_hub recorded it then.

    Args:
        ref: a `HubRef`, or text in the form `org/name@revision`.
        cache_dir: the Hub cache to fall back on (default: huggingface_hub's, under `HF_HOME`).
        api: the Hub client; by default one configured from the environment.

    Raises:
        ModelRefError: `ref` is text that does not name a Hub model.
        HubNotFoundError: the repo or the revision does not exist.
        HubUnavailableError: the Hub cannot be reached and the cache does not know the revision.
        HubPermissionError: the Hub refused the request (private or gated repo, bad token).
    """
    if isinstance(ref, str):
        parsed = parse_model_ref(ref)
        if not isinstance(parsed, HubRef):
            raise ModelRefError(f"{ref!r} is a local path, not a Hub model; write org/name@revision.", ref=ref)
        ref = parsed
    repo_id, revision = ref
    if FULL_SHA.match(revision):
        return ReleaseRef(repo_id=repo_id, revision=revision)
    api = api or HfApi()
    try:
        with hub_errors(what=f"{repo_id}@{revision}", endpoint=api.endpoint):
            sha = api.model_info(repo_id, revision=revision).sha
    except HubUnavailableError:
        cached = _cached_ref(repo_id, revision, cache_dir)
        if cached is None:
            raise
        sha = cached
    if sha is None or not FULL_SHA.match(sha):
        raise HubNotFoundError(
            f"The Hub at {api.endpoint} returned no commit sha for {repo_id}@{revision}.", ref=f"{repo_id}@{revision}"
        )
    named = None if sha.startswith(revision) else revision
    return ReleaseRef(repo_id=repo_id, revision=sha, ref=named)


def _cached_ref(repo_id: str, revision: str, cache_dir: Path | None) -> str | None:
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    ref_file = folder / "refs" / revision
    if ref_file.is_file():
        sha = ref_file.read_text().strip()
        return sha if FULL_SHA.match(sha) else None
    if _SHORT_SHA.match(revision) and (folder / "snapshots").is_dir():
        hits = [p.name for p in (folder / "snapshots").iterdir() if p.name.startswith(revision)]
        return hits[0] if len(hits) == 1 else None
    return None


def model_files(folder: Path) -> dict[str, Path]:
    """The files of `folder` that a release download would fetch, by name."""
    return {
        p.name: p
        for p in folder.iterdir()
        if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in MODEL_PATTERNS)
    }


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key that orders digit runs by value: `step200` before `step1000`."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]
