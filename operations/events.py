"""Prefect events for automations: what Graftwork emits, and with which resources and payload.

| event | resource | related | payload |
| --- | --- | --- | --- |
| `graftwork.release.discovered` | `graftwork.release.TRACK.SHA` | track | repo, revision, ref |
| `graftwork.candidate.evaluated` | `graftwork.candidate.N` | track, release | scores |
| `graftwork.approval.requested` | `graftwork.candidate.N` | track, release | channel, reasons, scores |
| `graftwork.candidate.promoted` | `graftwork.candidate.N` | track, release | channel, actor, reasons, scores |
| `graftwork.candidate.rejected` | `graftwork.candidate.N` | track, release | channel, actor, reasons, scores |

A team attaches a Prefect automation to one (a Slack message, a follow-up deployment) without code; the
README shows one. Emitting never fails the caller: Prefect drops an event it cannot send and logs why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.events import emit_event

from ..tasks.gate import Scored

RELEASE_DISCOVERED = "graftwork.release.discovered"
CANDIDATE_EVALUATED = "graftwork.candidate.evaluated"
APPROVAL_REQUESTED = "graftwork.approval.requested"
CANDIDATE_PROMOTED = "graftwork.candidate.promoted"
CANDIDATE_REJECTED = "graftwork.candidate.rejected"


def release_discovered(*, track: str, repo: str, revision: str, ref: str | None) -> None:
    """A track's watcher recorded a new release."""
    emit_event(
        event=RELEASE_DISCOVERED,
        resource=_resource(f"graftwork.release.{track}.{revision}", name=f"{track}/{ref or revision[:12]}"),
        related=[_track(track)],
        payload={"track": track, "repo": repo, "revision": revision, "ref": ref},
    )


def about_candidate(
    event: str, *, track: str, candidate: int, release: str, scores: Iterable[Scored], **payload: Any
) -> None:
    """An event about a candidate (`CANDIDATE_EVALUATED`, `APPROVAL_REQUESTED`, `CANDIDATE_PROMOTED`,
    `CANDIDATE_REJECTED`), with its scores (`{"task/metric": value}`) and `payload`."""
    emit_event(
        event=event,
        resource=_resource(f"graftwork.candidate.{candidate}", name=f"candidate-{candidate}"),
        related=[
            _track(track),
            {**_resource(f"graftwork.release.{track}.{release}", name=release), "prefect.resource.role": "release"},
        ],
        payload={
            "track": track,
            "candidate": f"candidate-{candidate}",
            "release": release,
            "scores": {
                f"{r.task}/{r.metric}" + ("" if r.filter == "none" else f"[{r.filter}]"): r.value for r in scores
            },
            **payload,
        },
    )


def _resource(resource_id: str, *, name: str) -> dict[str, str]:
    return {"prefect.resource.id": resource_id, "prefect.resource.name": name}


def _track(track: str) -> dict[str, str]:
    return {**_resource(f"graftwork.track.{track}", name=track), "prefect.resource.role": "track"}
