"""Promoting and rolling back a track's champion by hand, and the history of its channel: what `graft promote`,
`graft rollback` and `graft history` do, and what the `promote` and `rollback` flows wrap.

A hand decision is checked against the registry first: the candidate must be the track's and not the
champion already, and a rollback goes back along the channel's history, never forth
(`storage.runs.earlier_champions`). When the track publishes, the new champion's files are uploaded. Then,
under the channel's lock (`storage.runs.locked_champion`), the champion is read again: if another decision was
recorded since the check, this one is refused (`ChampionChangedError`) and records nothing; else the channel's
Hub tag (named after the channel) is moved to the upload's commit and the decision is recorded as a new
promotion row. A Hub failure records nothing, and the same command run again finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from ..errors import ChampionChangedError, PromotionError
from ..storage import Registry, runs
from ..storage import registry as rows
from ..storage.db import session_scope
from ..storage.models import Candidate, Promotion, Track
from ..tasks.track import TrackSpec
from ..terms import ActorKind, GateDecision
from .tracks import spec_of


@dataclass(frozen=True)
class Moved:
    """A hand decision as recorded: its promotion row, the new champion and the one it replaced, who made
    it, and the Hub commit the channel's tag now points to (None: the track does not publish)."""

    promotion: str
    decision: GateDecision
    track: str
    channel: str
    champion: str
    replaced: str | None
    actor: str
    repo: str | None
    commit: str | None

    def lines(self) -> list[str]:
        """What a person is told of it."""
        again = " again" if self.decision is GateDecision.ROLLBACK else ""
        before = "no champion before" if self.replaced is None else f"it replaced {self.replaced}"
        said = [
            f"{self.champion} is{again} the champion of {self.track}/{self.channel} "
            f"({self.promotion}, by {self.actor}; {before})"
        ]
        if self.commit is not None:
            said.append(f"Hub tag {self.channel} of {self.repo} now points at commit {self.commit[:12]}")
        return said


@dataclass(frozen=True)
class Decided:
    """One decision of a channel's history, as `graft history` shows it."""

    id: str
    time: datetime
    decision: GateDecision
    candidate: str | None
    replaced: str | None
    actor_kind: ActorKind
    actor: str
    reasons: list[str]


@dataclass(frozen=True)
class History:
    """A track's channel: its champion now and every decision made on it, oldest first."""

    track: str
    channel: str
    champion: str | None
    decisions: list[Decided]


@dataclass(frozen=True)
class Target:
    """A checked hand decision, before it is published and recorded."""

    track: str
    spec: TrackSpec
    candidate_id: int
    folder: Path
    replacing: int | None


def promote(registry: Registry, *, candidate: str, actor: str, track: str | None = None, reason: str) -> Moved:
    """Make `candidate` (`candidate-N` or N) the champion of its track's channel, bypassing the gate.

    `track`, when given, must be the candidate's track.

    Raises:
        NotFoundError: no such candidate or track.
        PromotionError: the candidate is another track's, or the champion already.
        TrackError: the track's stored spec no longer validates.
        ModelFolderError, HubPermissionError, HubNotFoundError, HubUnavailableError: the track publishes, and
            the candidate's folder or the Hub is not as publishing needs (nothing is recorded).
    """
    with session_scope(registry.engine) as session:
        row = rows.get_candidate(session, ref=candidate)
        owner = row.track if track is None else rows.get_track(session, name=track)
        target = checked(session, track=owner, candidate=row)
    return record(registry, target=target, decision=GateDecision.PROMOTE, actor=actor, reasons=[reason])


def rollback(registry: Registry, *, track: str, actor: str, to: str | None = None, reason: str) -> Moved:
    """Put back the champion that the current one was promoted over on the track's channel (a new promotion row;
    nothing is deleted), or with `to`, that earlier champion (`candidate-N` or N). A second rollback goes
    further back, never forth to the champion just rolled back from.

    Raises:
        NotFoundError: no such track or candidate.
        PromotionError: the channel has no earlier champion, or `to` is not one of its earlier champions.
        TrackError: the track's stored spec no longer validates.
        ModelFolderError, HubPermissionError, HubNotFoundError, HubUnavailableError: as `promote`.
    """
    with session_scope(registry.engine) as session:
        owner = rows.get_track(session, name=track)
        channel = spec_of(owner).channel
        where = f"{owner.name}/{channel}"
        current = runs.champion(session, track=owner, channel=channel)
        if current is None:
            raise PromotionError(
                f"{where} has no champion yet, so there is nothing to roll back; `graft promote CANDIDATE` makes one.",
                track=owner.name,
            )
        earlier = runs.earlier_champions(session, track=owner, channel=channel)
        if not earlier:
            raise PromotionError(
                f"{where} has no champion before candidate-{current.id} to roll back to; `graft history "
                f"{owner.name}` shows its decisions, and `graft promote CANDIDATE` promotes another candidate.",
                track=owner.name,
            )
        wanted = earlier[0] if to is None else rows.get_candidate(session, ref=to)
        target = checked(session, track=owner, candidate=wanted)
        if wanted not in earlier:
            names = ", ".join(dict.fromkeys(f"candidate-{c.id}" for c in earlier))
            raise PromotionError(
                f"candidate-{wanted.id} was not a champion of {where} before candidate-{current.id} (a rollback goes "
                f"back, to one of: {names}); `graft promote candidate-{wanted.id}` promotes it instead.",
                track=owner.name,
            )
    return record(registry, target=target, decision=GateDecision.ROLLBACK, actor=actor, reasons=[reason])


def history(registry: Registry, *, track: str) -> History:
    """Every decision made on the track's channel, oldest first, and its champion now.

    Raises:
        NotFoundError: no such track.
        TrackError: the track's stored spec no longer validates.
    """
    with session_scope(registry.engine) as session:
        owner = rows.get_track(session, name=track)
        channel = spec_of(owner).channel
        current = runs.champion(session, track=owner, channel=channel)
        decisions = [_decided(row) for row in runs.channel_history(session, track=owner, channel=channel)]
    champion = None if current is None else f"candidate-{current.id}"
    return History(track=track, channel=channel, champion=champion, decisions=decisions)


def prefect_actor() -> str:
    """Who started the running flow, as Prefect records it: the user (Prefect Cloud) or automation that created
    the flow run, as `prefect user NAME` or `prefect automation NAME`; else (a run started through Prefect's
    API, UI or CLI on a server that records no users) `prefect`."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    creator = None if context is None or context.flow_run is None else context.flow_run.created_by
    if creator is None or not creator.display_value:
        return "prefect"
    return f"prefect {(creator.type or 'user').lower()} {creator.display_value}"


def checked(session: Session, *, track: Track, candidate: Candidate) -> Target:
    """The decision to make `candidate` the champion of `track`'s channel, checked.

    Raises:
        PromotionError: the candidate is another track's, or the champion already.
        TrackError: the track's stored spec no longer validates.
    """
    spec = spec_of(track)
    if candidate.track_id != track.id:
        raise PromotionError(
            f"candidate-{candidate.id} is a candidate of track {candidate.track.name}, not of {track.name}; "
            f"a channel's champion must be one of its own track's candidates.",
            track=track.name,
        )
    current = runs.champion(session, track=track, channel=spec.channel)
    if current is not None and current.id == candidate.id:
        raise PromotionError(
            f"candidate-{candidate.id} is the champion of {track.name}/{spec.channel} already; nothing to do.",
            track=track.name,
        )
    replacing = None if current is None else current.id
    return Target(
        track=track.name, spec=spec, candidate_id=candidate.id, folder=Path(candidate.model_uri), replacing=replacing
    )


def record(registry: Registry, *, target: Target, decision: GateDecision, actor: str, reasons: list[str]) -> Moved:
    """Record a person's decision, checked again under the channel's lock against the champion it was meant to
    replace; when the track publishes, the candidate's files are uploaded first and the channel's Hub tag is moved
    under the same lock, just before the row is committed (a Hub failure records nothing).

    Raises:
        ChampionChangedError: another decision on the channel was recorded since this one was checked.
        HubPermissionError, HubNotFoundError, HubUnavailableError: as `promote`.
    """
    spec, channel = target.spec, target.spec.channel
    commit = None
    if spec.publish is not None:
        from ..tasks.hub import upload_model  # the Hub's client loads for a track that publishes

        commit = upload_model(
            folder=target.folder,
            repo_id=spec.publish.repo,
            message=f"Graftwork: candidate-{target.candidate_id} on {target.track}/{channel}",
            private=spec.publish.private,
        )
    with session_scope(registry.engine) as session:
        track = rows.get_track(session, name=target.track)
        current = runs.locked_champion(session, track=track, channel=channel)
        if current != target.replacing:
            was = "none" if target.replacing is None else f"candidate-{target.replacing}"
            now = "none" if current is None else f"candidate-{current}"
            raise ChampionChangedError(
                f"the champion of {target.track}/{channel} changed while this {decision} was made (it was {was}, it "
                f"is {now}): another decision was recorded first, and this one is not. `graft history "
                f"{target.track}` shows it; decide again on what is there now.",
                track=target.track,
            )
        if spec.publish is not None and commit is not None:
            from ..tasks.hub import move_tag

            move_tag(repo_id=spec.publish.repo, tag=channel, revision=commit)
        row = runs.add_promotion(
            session,
            track=track,
            channel=channel,
            decision=decision,
            to_candidate=runs.get_candidate(session, candidate_id=target.candidate_id),
            reasons=reasons,
            actor_kind=ActorKind.USER,
            actor=actor,
        )
        moved = Moved(
            promotion=rows.public_id(row),
            decision=decision,
            track=target.track,
            channel=channel,
            champion=f"candidate-{target.candidate_id}",
            replaced=None if row.from_candidate_id is None else f"candidate-{row.from_candidate_id}",
            actor=actor,
            repo=None if spec.publish is None else spec.publish.repo,
            commit=commit,
        )
    return moved


def _decided(row: Promotion) -> Decided:
    return Decided(
        id=rows.public_id(row),
        time=row.created_at,
        decision=row.decision,
        candidate=None if row.to_candidate_id is None else f"candidate-{row.to_candidate_id}",
        replaced=None if row.from_candidate_id is None else f"candidate-{row.from_candidate_id}",
        actor_kind=row.actor_kind,
        actor=row.actor,
        reasons=list(row.reasons),
    )
