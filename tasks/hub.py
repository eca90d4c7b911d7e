"""The Hugging Face Hub: discovering releases, downloading them pinned, publishing promoted models.

A release is a repo id plus a pinned 40-character revision. Releases come from the Hub (new repos of
an author, or new branches/tags of one repo, as OLMo publishes its checkpoints) or from a local
release directory (each sub-folder a release, pinned by a content hash).

The Hub is configured the Hub's own way: `HF_ENDPOINT`, `HF_TOKEN` and `HF_HOME` are read by
huggingface_hub itself; callers may also pass an `HfApi`, an endpoint or a token. A token is never
logged nor put into an error message.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from tasks.checkpoints import GENERATION_CONFIG, SAFETENSORS_INDEX, TOKENIZER_FILES
from tasks.errors import (
    HubNotFoundError,
    HubPermissionError,
    HubUnavailableError,
    ModelFolderError,
    ModelRefError,
    OutputExistsError,
)

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
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
_PARTIAL = re.compile(r"(\.partial|\.tmp|\.incomplete|\.lock)(-.*)?$")


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
        if not _SHA.match(self.revision):
            raise ModelRefError(
                f"Release {self.repo_id}@{self.revision} is not pinned: a release needs the full 40-character "
                "commit sha. Resolve the branch or tag first with tasks.hub.resolve."
            )

    @property
    def is_local(self) -> bool:
        """Whether the release is a folder of a local release directory."""
        return self.path is not None

    def __str__(self) -> str:
        at = f"{self.ref} = {self.revision[:12]}" if self.ref else self.revision
        return f"{self.repo_id}@{at}"


class HubRef(NamedTuple):
    """A model on the Hub as a user names it: repo id and a branch, tag or (short) sha, not yet pinned."""

    repo_id: str
    revision: str = "main"


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
    with _hub_errors(what=f"the models of {author!r}", endpoint=api.endpoint):
        repo_ids = [m.id for m in api.list_models(author=author)]
    matching = [r for r in repo_ids if _matches(name_pattern, r.split("/", 1)[-1])]
    releases = []
    for repo_id in sorted(matching, key=_natural):
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
    with _hub_errors(what=f"the branches and tags of {repo_id}", endpoint=api.endpoint):
        refs = api.list_repo_refs(repo_id)
    found: dict[str, str] = {}
    for info in [*refs.branches, *refs.tags]:
        if info.name not in found and _matches(ref_pattern, info.name):
            found[info.name] = info.target_commit
    return [ReleaseRef(repo_id=repo_id, revision=found[n], ref=n) for n in sorted(found, key=_natural)]


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
    root = Path(release_dir).expanduser().resolve()
    if not root.is_dir():
        raise ModelFolderError(f"Release directory {root} does not exist; create it or fix the track's release_dir.")
    releases = []
    for sub in sorted(root.iterdir(), key=lambda p: _natural(p.name)):
        if not sub.is_dir() or sub.name.startswith((".", "_")) or _PARTIAL.search(sub.name):
            continue
        files = _model_files(sub)
        if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
            continue
        revision = content_revision(sub)
        releases.append(ReleaseRef(repo_id=f"{LOCAL_PREFIX}{root}", revision=revision, ref=sub.name, path=sub))
    return releases


def content_revision(folder: Path) -> str:
    """A 40-hex-character hash of a folder's model files (names and sha256 of each), for local releases."""
    h = hashlib.sha256()
    for name, path in sorted(_model_files(folder).items()):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()[:40]


def _model_files(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in folder.iterdir()
        if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in MODEL_PATTERNS)
    }


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
            raise ModelRefError(f"{text!r} names no revision after '@'; write e.g. {repo_id}@main or {repo_id}@<sha>.")
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
        raise ModelRefError(f"{text!r}: {repo_id!r} is not a Hub repo id ({exc}). Write org/name@revision.") from None


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
            raise ModelRefError(f"{ref!r} is a local path, not a Hub model; write org/name@revision.")
        ref = parsed
    repo_id, revision = ref
    if _SHA.match(revision):
        return ReleaseRef(repo_id=repo_id, revision=revision)
    api = api or HfApi()
    try:
        with _hub_errors(what=f"{repo_id}@{revision}", endpoint=api.endpoint):
            sha = api.model_info(repo_id, revision=revision).sha
    except HubUnavailableError:
        cached = _cached_ref(repo_id, revision, cache_dir)
        if cached is None:
            raise
        sha = cached
    if sha is None or not _SHA.match(sha):
        raise HubNotFoundError(f"The Hub at {api.endpoint} returned no commit sha for {repo_id}@{revision}.")
    named = None if sha.startswith(revision) else revision
    return ReleaseRef(repo_id=repo_id, revision=sha, ref=named)


def _cached_ref(repo_id: str, revision: str, cache_dir: Path | None) -> str | None:
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    ref_file = folder / "refs" / revision
    if ref_file.is_file():
        sha = ref_file.read_text().strip()
        return sha if _SHA.match(sha) else None
    if _SHORT_SHA.match(revision) and (folder / "snapshots").is_dir():
        hits = [p.name for p in (folder / "snapshots").iterdir() if p.name.startswith(revision)]
        return hits[0] if len(hits) == 1 else None
    return None


def download(
    *, release: ReleaseRef, cache_dir: Path | None = None, token: str | None = None, endpoint: str | None = None
) -> Path:
    """The local folder of a release: downloaded from the Hub at its pinned commit, or cached.

    Only the model files are fetched (safetensors weights and index, config, generation config,
    tokenizer files): no README, no pickle weights, no other files. A release downloaded before is
    served from the cache without the network, also in offline mode. When the release names a
    branch or tag, the cache records it (as huggingface_hub does), so `resolve` can pin that name
    offline later. Local releases are returned as they are.

    Args:
        release: the release; its revision must be the full commit sha.
        cache_dir: the Hub cache (default: huggingface_hub's, under `HF_HOME`).
        token: a Hub token (default: huggingface_hub's own, e.g. `HF_TOKEN`). Never logged.
        endpoint: the Hub's URL (default: `HF_ENDPOINT`, else huggingface.co).

    Raises:
        ModelRefError: the revision is not a full commit sha (resolve it first).
        HubNotFoundError: the repo or the commit does not exist.
        HubUnavailableError: the Hub cannot be reached and the release is not (fully) cached.
        HubPermissionError: the Hub refused the request (private or gated repo, bad token).
        ModelFolderError: the commit holds no safetensors weights or no config.json.
    """
    if release.path is not None:
        return release.path
    if not _SHA.match(release.revision):  # ReleaseRef checks this too; a NamedTuple or a copy may not
        raise ModelRefError(f"{release.repo_id}@{release.revision} is not pinned; resolve it first.")
    where = f"{release.repo_id}@{release.revision}"
    with _hub_errors(what=where, endpoint=endpoint or constants.ENDPOINT, token=token):
        folder = Path(
            snapshot_download(
                release.repo_id,
                revision=release.revision,
                allow_patterns=list(MODEL_PATTERNS),
                cache_dir=cache_dir,
                token=token,
                endpoint=endpoint,
            )
        )
    if release.ref is not None:
        _remember_ref(folder, release.ref, release.revision)
    names = {p.name for p in folder.iterdir()}
    if "config.json" not in names or not (SAFETENSORS_INDEX in names or any(n.endswith(".safetensors") for n in names)):
        raise ModelFolderError(
            f"{where} holds no safetensors weights or no config.json (found: {', '.join(sorted(names)) or 'nothing'}). "
            "Graftwork downloads only safetensors; convert the model or pick another revision."
        )
    return folder


def _remember_ref(snapshot: Path, ref: str, sha: str) -> None:
    """Record `ref -> sha` in the cache (`refs/<ref>`, as huggingface_hub does) for offline `resolve`."""
    ref_file = snapshot.parent.parent / "refs" / ref
    try:
        if ref_file.is_file() and ref_file.read_text() == sha:
            return
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_file.with_name(f".{ref_file.name}.{os.getpid()}.tmp")
        tmp.write_text(sha)
        os.replace(tmp, ref_file)
    except OSError:
        pass  # only an offline convenience; the download itself succeeded


def fetch_model(text: str | Path, *, cache_dir: Path | None = None, token: str | None = None) -> Path:
    """A model argument of the command line as a local folder: local paths as they are, Hub models downloaded.

    `org/name@rev` (or `org/name`, meaning `main`) is resolved to its commit sha and downloaded
    pinned to it (see `resolve` and `download`).

    Raises:
        ModelRefError, HubNotFoundError, HubUnavailableError, HubPermissionError, ModelFolderError:
            as `parse_model_ref`, `resolve` and `download` do.
    """
    parsed = parse_model_ref(text)
    if isinstance(parsed, Path):
        return parsed
    api = HfApi(token=token) if token else None
    try:
        release = resolve(ref=parsed, cache_dir=cache_dir, api=api)
    except HubNotFoundError as exc:
        if "@" not in str(text):
            raise HubNotFoundError(f"{exc} (There is no local folder {str(text)!r} either.)") from None
        raise
    return download(release=release, cache_dir=cache_dir, token=token)


def publish(
    *,
    folder: Path,
    repo_id: str,
    tag: str,
    token: str | None = None,
    api: HfApi | None = None,
    private: bool = True,
) -> str:
    """Publish a promoted model folder to a Hub repo and tag the commit.

    Creates the repo if needed (private by default), uploads the model files and a README.md if
    present, and creates `tag` on the resulting commit. Publishing the same folder under the same
    tag again returns the same commit (so a retried flow run is harmless).

    Args:
        folder: the model folder.
        repo_id: `org/name` on the Hub.
        tag: the tag to create on the commit (e.g. the candidate's id).
        token: a Hub token with write access (default: huggingface_hub's own, e.g. `HF_TOKEN`).
        api: the Hub client; by default one configured from the environment.
        private: create the repo private (an existing repo keeps its visibility).

    Returns:
        The 40-character sha of the commit the tag points to.

    Raises:
        ModelFolderError: `folder` is not a model folder with safetensors weights.
        OutputExistsError: `tag` exists already on another commit.
        HubPermissionError: the token is missing, invalid or cannot write to `repo_id`.
        HubNotFoundError: the repo does not exist and could not be created.
        HubUnavailableError: the Hub cannot be reached.
    """
    folder = Path(folder)
    files = _model_files(folder) if folder.is_dir() else {}
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        raise ModelFolderError(f"{folder} is not a model folder with config.json and safetensors weights.")
    api = api or HfApi()
    where = f"{repo_id} (tag {tag})"
    with _hub_errors(what=where, endpoint=api.endpoint, token=token):
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=list(PUBLISH_PATTERNS),
            commit_message=f"Graftwork: publish {tag}",
            token=token,
        )
        sha = str(commit.oid)
        try:
            api.create_tag(repo_id, tag=tag, revision=sha, tag_message=f"Graftwork: {tag}", token=token)
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 409:
                raise
            tagged = {t.name: t.target_commit for t in api.list_repo_refs(repo_id, token=token).tags}
            if tagged.get(tag) != sha:
                raise OutputExistsError(
                    f"Tag {tag!r} exists already on {repo_id} at another commit ({tagged.get(tag)}); "
                    "publish under a new tag, or delete the old one on the Hub first."
                ) from None
    return sha


@contextmanager
def _hub_errors(*, what: str, endpoint: str, token: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's errors into Graftwork's, naming `what` and the endpoint, never the token."""
    try:
        yield
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise HubNotFoundError(
            _scrub(
                f"{what} was not found on the Hub at {endpoint} ({_status(exc)}). Check the repo id and the "
                "branch/tag/sha; for a private or gated repo, set HF_TOKEN to a token that can read it.",
                token,
            )
        ) from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx2.TransportError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)):
            raise HubNotFoundError(
                _scrub(f"{what} was not found on the Hub at {endpoint} ({_status(cause)}). Check the sha.", token)
            ) from None
        offline = constants.is_offline_mode() or isinstance(cause or exc, OfflineModeIsEnabled)
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local cache: unset HF_HUB_OFFLINE to download it."
            if offline
            else "the Hub cannot be reached and it is not (fully) in the local cache: check the network and "
            "HF_ENDPOINT, then try again."
        )
        raise HubUnavailableError(_scrub(f"Cannot get {what} from {endpoint}: {hint}", token)) from None
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            raise HubPermissionError(
                _scrub(
                    f"The Hub at {endpoint} refused access to {what} (HTTP {code}). Set HF_TOKEN (or pass a token) "
                    "that can read it, or write to it when publishing.",
                    token,
                )
            ) from None
        if code == 404:
            raise HubNotFoundError(
                _scrub(f"{what} was not found on the Hub at {endpoint} (HTTP 404).", token)
            ) from None
        raise HubUnavailableError(
            _scrub(f"The Hub at {endpoint} failed on {what} (HTTP {code}); try again later.", token)
        ) from None
    except (ConnectionError, TimeoutError) as exc:
        raise HubUnavailableError(
            _scrub(f"Cannot reach the Hub at {endpoint} for {what} ({type(exc).__name__}); check HF_ENDPOINT.", token)
        ) from None


def _status(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message


def _matches(pattern: str | re.Pattern[str], name: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _natural(text: str) -> list[tuple[int, int | str]]:
    """Sort key that orders digit runs by value: `step200` before `step1000`."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]
