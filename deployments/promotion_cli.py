"""`graft promote`, `graft rollback`, `graft history`, `graft approve` and `graft reject`: a track's champion by
hand, a person's answer to a candidate that waits for approval, and its channel's story.

The actor recorded is the user running the command (the operating system's login name), or `--as NAME`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from ..terms import ActorKind, GateDecision
from .console import JsonOption, open_registry, say, say_json, settings, user_errors

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from ..operations.promotions import Decided, Moved

Reason = Annotated[str | None, typer.Option("--reason", help="Why, as the promotion row records it.")]


def promote(
    candidate: Annotated[str, typer.Argument(help="The candidate: candidate-N or N (`graft registry list`).")],
    track: Annotated[
        str | None, typer.Option("--track", "-t", help="Refuse unless the candidate is this track's.")
    ] = None,
    reason: Reason = None,
) -> None:
    """Make CANDIDATE the champion of its track's channel, bypassing the gate (and move the channel's Hub tag
    when the track publishes)."""
    from ..operations import promotions

    with user_errors():
        moved = promotions.promote(
            open_registry(), candidate=candidate, track=track, actor=_user(), reason=reason or "promoted by hand"
        )
    _said(moved)


def rollback(
    track: Annotated[str, typer.Argument(help="The track whose channel to roll back.")],
    to: Annotated[
        str | None, typer.Option("--to", help="An earlier champion to go back to (default: the one before).")
    ] = None,
    reason: Reason = None,
) -> None:
    """Put back the champion the current one replaced; again, the one before that (never forth again).
    Nothing is deleted: a rollback is a new promotion row."""
    from ..operations import promotions

    with user_errors():
        moved = promotions.rollback(
            open_registry(), track=track, to=to, actor=_user(), reason=reason or "rolled back by hand"
        )
    _said(moved)


As = Annotated[str | None, typer.Option("--as", help="Your name, as the promotion row records it (default: login).")]


def approve(
    candidate: Annotated[
        str, typer.Argument(help="The candidate that waits: candidate-N or N (`graft track status`).")
    ],
    comment: Annotated[str, typer.Option("--comment", help="Why; recorded among the decision's reasons.")] = "",
    name: As = None,
) -> None:
    """Approve a candidate that passed its gate and waits for a person (`gate.approval: required`): it becomes the
    champion, the promotion row names you, and its suspended run resumes and finishes."""
    _answer(candidate, approve=True, comment=comment, name=name)


def reject(
    candidate: Annotated[str, typer.Argument(help="The candidate that waits: candidate-N or N.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, as the decision's reasons record it.")],
    name: As = None,
) -> None:
    """Reject a candidate that waits for a person's approval; its suspended run resumes and finishes."""
    _answer(candidate, approve=False, comment=reason, name=name)


def _answer(candidate: str, *, approve: bool, comment: str, name: str | None) -> None:
    from ..operations.awaiting import Approval, decide_approval, resume_waiting_run
    from .prefect_api import check, connected, endpoint

    registry = open_registry()
    with user_errors():
        answer = Approval(approve=approve, approver=name or _user(), comment=comment)
        done = decide_approval(registry, candidate=candidate, answer=answer)
        target = endpoint(settings())
        reachable = check(target)
    say(done.line())
    for reason in done.reasons:
        say(f"    {reason}")
    if not reachable:
        say(
            f"no Prefect server answers at {target.api_url}: a suspended run of it stays suspended until this "
            "command runs again with the server up (`graft serve`)"
        )
        return
    with user_errors(), connected(target):
        resumed = resume_waiting_run(registry, candidate=candidate, answer=answer)
    if resumed is not None:
        say(f"resumed its suspended flow run {resumed}")


def history(
    track: Annotated[str, typer.Argument(help="The track.")],
    as_json: JsonOption = False,
) -> None:
    """Every decision on the track's channel, oldest first: time, decision, candidate, actor and reasons."""
    from ..operations import promotions

    with user_errors():
        story = promotions.history(open_registry(), track=track)
    if as_json:
        say_json(asdict(story))
        return
    where = f"{story.track}/{story.channel}"
    if not story.decisions:
        say(f"no decisions on {where} yet")
        return
    say(f"history of {where}, oldest first; champion now: {story.champion or 'none'}")
    for decided in story.decisions:
        say(_line(decided))
        for reason in decided.reasons:
            say(f"    {reason}")


def _line(decided: Decided) -> str:
    if decided.decision is GateDecision.REJECT:
        before = "no champion" if decided.replaced is None else f"{decided.replaced} stays"
    else:
        before = "no champion before" if decided.replaced is None else f"replacing {decided.replaced}"
    actor = "the gate" if decided.actor_kind is ActorKind.GATE else decided.actor
    return (
        f"{decided.id:<13} {decided.time:%Y-%m-%d %H:%M:%S}  {decided.decision:<8}  "
        f"{decided.candidate}, {before}, by {actor}"
    )


def _said(moved: Moved) -> None:
    for line in moved.lines():
        say(line)


def _user() -> str:
    """The login name of the user running the command.

    Raises:
        PromotionError: there is none (no LOGNAME or USER, and no passwd entry for this uid).
    """
    import getpass

    from ..errors import PromotionError

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise PromotionError(
            "cannot tell which user runs graft (no LOGNAME or USER set, and no passwd entry for this uid); "
            "set LOGNAME to your user name.",
        ) from None
