"""How runs are told apart in the Prefect UI: a release's readable label (`04-M4@5c81816a`), and the run
names (`TRACK/LABEL`), tags and artifact keys built from the track and that label."""

from __future__ import annotations

import re
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from ..storage.models import Release
from ..tasks.hub import LOCAL_PREFIX, ReleaseRef

SHORT_SHA = 8


def release_ref(release: Release) -> ReleaseRef:
    """The release as the tasks name it."""
    path = None if release.path is None else Path(release.path)
    return ReleaseRef(repo_id=release.repo_id, revision=release.revision, ref=release.ref, path=path)


def release_label(release: ReleaseRef) -> str:
    """A release as people tell it apart: its folder (local) or its repo's name and branch or tag (Hub),
    `@` the first 8 hex digits of its revision: `04-M4@5c81816a`, `Llama-3.1-8B:main@0e9e39f2`."""
    sha = release.revision[:SHORT_SHA]
    if release.repo_id.startswith(LOCAL_PREFIX) and release.ref:
        return f"{release.ref}@{sha}"
    name = release.repo_id.rsplit("/", 1)[-1]
    return f"{name}:{release.ref}@{sha}" if release.ref else f"{name}@{sha}"


def run_name(*, track: str, release: ReleaseRef) -> str:
    """The name of a release's run: `testbed-demo/04-M4@5c81816a`."""
    return f"{track}/{release_label(release)}"


def track_tag(track: str) -> str:
    """The tag of every run of a track: `track:testbed-demo`."""
    return f"track:{track}"


def run_tags(*, track: str, release: ReleaseRef) -> list[str]:
    """The tags of a release's run: its track's and `release:04-M4@5c81816a`."""
    return [track_tag(track), f"release:{release_label(release)}"]


def step_key(*, track: str, release: ReleaseRef, step: str) -> str:
    """The artifact key of one step of a release's run: `testbed-demo-04-m4-5c81816a-finetune`."""
    return artifact_key(f"{track}-{release_label(release)}-{step}")


def artifact_key(key: str) -> str:
    """`key` as Prefect allows artifact keys: lowercase letters, digits and single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def tag_this_run(*tags: str) -> None:
    """Add `tags` to the flow run this is called in, however it was started (inline, by a deployment or on a
    schedule), keeping the tags it has (in order, as Prefect keeps them); outside a flow run, do nothing."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    with get_client(sync_client=True) as client:
        run.tags = sorted({*client.read_flow_run(run.id).tags, *tags})
        client.update_flow_run(run.id, tags=run.tags)
