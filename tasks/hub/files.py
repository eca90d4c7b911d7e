"""Moving model files between the Hub and this machine: downloads pinned to a commit, publishing promoted
models (create the repo, upload, tag), and moving a tag (a channel's) to another commit. A token is never
logged nor put into an error message."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from ...errors import HubNotFoundError, ModelFolderError, ModelRefError, OutputExistsError
from ..io.layout import SAFETENSORS_INDEX
from .refs import (
    FULL_SHA,
    MODEL_PATTERNS,
    PUBLISH_PATTERNS,
    ReleaseRef,
    model_files,
    parse_model_ref,
    resolve,
)
from .translate import hub_errors


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
    if not FULL_SHA.match(release.revision):  # ReleaseRef checks this too; a NamedTuple or a copy may not
        raise ModelRefError(
            f"{release.repo_id}@{release.revision} is not pinned; resolve it first.", ref=release.repo_id
        )
    where = f"{release.repo_id}@{release.revision}"
    with hub_errors(what=where, endpoint=endpoint or constants.ENDPOINT, token=token):
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
            "Graftwork downloads only safetensors; convert the model or pick another revision.",
            ref=where,
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


def fetch_config(*, repo_id: str, revision: str, local_only: bool = False, cache_dir: Path | None = None) -> Path:
    """The config.json of a Hub model at a revision (branch, tag or sha), alone: no weights are fetched.

    Args:
        repo_id: `org/name` on the Hub.
        revision: the branch, tag or commit sha.
        local_only: take it from the local cache only, never from the network.
        cache_dir: the Hub cache (default: huggingface_hub's, under `HF_HOME`).

    Raises:
        HubNotFoundError: the repo, the revision or its config.json does not exist.
        HubUnavailableError: the Hub cannot be reached (or `local_only`, or offline mode) and it is not cached.
        HubPermissionError: the Hub refused the request (private or gated repo, bad token).
    """
    with hub_errors(what=f"{repo_id}@{revision} config.json", endpoint=constants.ENDPOINT):
        return Path(
            hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir, local_files_only=local_only)
        )


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
            raise HubNotFoundError(f"{exc} (There is no local folder {str(text)!r} either.)", ref=str(text)) from None
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
    api = api or HfApi()
    sha = upload_model(
        folder=folder, repo_id=repo_id, message=f"Graftwork: publish {tag}", token=token, api=api, private=private
    )
    with hub_errors(what=f"{repo_id} (tag {tag})", endpoint=api.endpoint, token=token):
        try:
            api.create_tag(repo_id, tag=tag, revision=sha, tag_message=f"Graftwork: {tag}", token=token)
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 409:
                raise
            tagged = _tags(api, repo_id=repo_id, token=token)
            if tagged.get(tag) != sha:
                raise OutputExistsError(
                    f"Tag {tag!r} exists already on {repo_id} at another commit ({tagged.get(tag)}); "
                    "publish under a new tag, or delete the old one on the Hub first.",
                    path=tag,
                ) from None
    return sha


def upload_model(
    *,
    folder: Path,
    repo_id: str,
    message: str,
    token: str | None = None,
    api: HfApi | None = None,
    private: bool = True,
) -> str:
    """Upload a model folder's files (and a README.md if present) to a Hub repo, creating the repo if needed
    (private by default); a commit is made only when the files differ from the repo's head.

    Returns:
        The 40-character sha of the commit that holds the files (the head when nothing changed).

    Raises:
        ModelFolderError: `folder` is not a model folder with safetensors weights.
        HubPermissionError: the token is missing, invalid or cannot write to `repo_id`.
        HubNotFoundError: the repo does not exist and could not be created.
        HubUnavailableError: the Hub cannot be reached.
    """
    folder = Path(folder)
    files = model_files(folder) if folder.is_dir() else {}
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        raise ModelFolderError(f"{folder} is not a model folder with config.json and safetensors weights.", path=folder)
    api = api or HfApi()
    with hub_errors(what=repo_id, endpoint=api.endpoint, token=token):
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=list(PUBLISH_PATTERNS),
            commit_message=message,
            token=token,
        )
    return str(commit.oid)


def move_tag(*, repo_id: str, tag: str, revision: str, token: str | None = None, api: HfApi | None = None) -> None:
    """Point `tag` of a Hub repo at the commit `revision`: delete it where it points elsewhere, then create it
    there (a tag already there is left as it is).

    Raises:
        HubPermissionError: the token is missing, invalid or cannot write to `repo_id`.
        HubNotFoundError: the repo or the commit does not exist.
        HubUnavailableError: the Hub cannot be reached.
    """
    api = api or HfApi()
    with hub_errors(what=f"{repo_id} (tag {tag})", endpoint=api.endpoint, token=token):
        tagged = _tags(api, repo_id=repo_id, token=token)
        if tagged.get(tag) == revision:
            return
        if tag in tagged:
            api.delete_tag(repo_id, tag=tag, token=token)
        api.create_tag(repo_id, tag=tag, revision=revision, tag_message=f"Graftwork: {tag}", token=token)


def _tags(api: HfApi, *, repo_id: str, token: str | None) -> dict[str, str]:
    """The repo's tags and the commits they point to."""
    return {t.name: t.target_commit for t in api.list_repo_refs(repo_id, token=token).tags}
