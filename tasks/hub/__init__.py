"""The Hugging Face Hub: releases pinned to a commit, discovering a track's releases, downloads and
publishing. The Hub is configured the Hub's own way (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`); a token
is never logged nor put into an error message."""

from .discover import content_revision, discover_local, discover_refs, discover_repos
from .facts import ReleaseFacts, natural_position, release_facts
from .files import download, fetch_config, fetch_model, move_tag, publish, upload_model
from .refs import LOCAL_PREFIX, MODEL_PATTERNS, HubRef, ReleaseRef, parse_model_ref, resolve

__all__ = [
    "LOCAL_PREFIX",
    "MODEL_PATTERNS",
    "HubRef",
    "ReleaseFacts",
    "ReleaseRef",
    "content_revision",
    "discover_local",
    "discover_refs",
    "discover_repos",
    "download",
    "fetch_config",
    "fetch_model",
    "move_tag",
    "natural_position",
    "parse_model_ref",
    "publish",
    "release_facts",
    "resolve",
    "upload_model",
]
