"""Decisions on a channel are serialised, on both databases: two hand decisions (promote, rollback) or a hand
rollback and the gate's promotion, released together after each has checked the champion, record exactly one;
the other is refused with `ChampionChangedError` and records nothing, so the history never reads "candidate-2,
replacing candidate-2" and the next rollback is never stuck.

The race is made certain, not hoped for: each side runs in a thread of its own up to the seam between its check
and its record, and a barrier releases both there at once, round after round."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from graftwork.errors import ChampionChangedError, PromotionError
from graftwork.operations import promotions
from graftwork.storage import Registry, runs
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import Promotion
from graftwork.terms import GateDecision, RecycleMode
from tests.registry.conftest import candidate, digest, record_release, track_spec

ROUNDS = 6
Outcome = Any  # what a side returned, or the exception it raised


def _track(registry: Registry, tmp_path: Path, name: str) -> list[int]:
    """A track whose channel saw candidate 1 then candidate 2 promoted (2 is the champion); its 3 candidates."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q: 1+1?", "completion": "2"}\n')
    spec = {**track_spec(name, {"kind": "hub-repos", "author": "org", "name_pattern": "m-*"})}
    spec["finetune"] = {"data": str(data)}
    with session_scope(registry.engine) as session:
        track = rows.save_track(session, name=name, spec=spec, digest=digest(spec))[0]
        made = []
        for n in (1, 2, 3):
            release, _ = record_release(session, track=track, repo_id="org/m", revision=f"{n:040d}")
            made.append(candidate(session, release, mode=RecycleMode.ITERATIVE, uri=f"/m/{n}").id)
    for c in made[:2]:
        promotions.promote(registry, candidate=f"candidate-{c}", actor="setup", reason="setup")
    return made


def _released_together(monkeypatch: pytest.MonkeyPatch, *sides: Callable[[threading.Barrier], object]) -> list[Outcome]:
    """Run each side in its own thread, released together at the seam between its check and its record: a hand
    decision waits there inside `promotions.record`, a gate side waits on the barrier it is handed. Returns each
    side's result, or the exception it raised."""
    barrier = threading.Barrier(len(sides), timeout=60)
    record = promotions.record

    def held(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return record(*args, **kwargs)

    monkeypatch.setattr(promotions, "record", held)
    outcomes: list[Outcome] = [None] * len(sides)

    def run(i: int, side: Callable[[threading.Barrier], object]) -> None:
        try:
            outcomes[i] = side(barrier)
        except Exception as e:  # what a side raised is its outcome
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i, side)) for i, side in enumerate(sides)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    monkeypatch.setattr(promotions, "record", record)
    return outcomes


def _decisions(registry: Registry, name: str) -> list[tuple[str, int | None, int | None]]:
    with session_scope(registry.engine) as session:
        track = rows.get_track(session, name=name)
        query = select(Promotion).where(Promotion.track_id == track.id).order_by(Promotion.id)
        return [(p.decision.value, p.from_candidate_id, p.to_candidate_id) for p in session.scalars(query)]


def _one_won(outcomes: list[Outcome]) -> tuple[int, Exception]:
    """The index of the side that recorded, and what the other raised."""
    lost = [o for o in outcomes if isinstance(o, Exception)]
    assert len(lost) == 1 and isinstance(lost[0], ChampionChangedError), outcomes
    return next(i for i, o in enumerate(outcomes) if not isinstance(o, Exception)), lost[0]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_promotions_of_one_candidate_record_one(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    _, c2, c3 = _track(registry, tmp_path, "p")

    def promote(_: threading.Barrier) -> object:
        return promotions.promote(registry, candidate=f"candidate-{c3}", actor="a", reason="r")

    _, error = _one_won(_released_together(monkeypatch, promote, promote))
    assert f"(it was candidate-{c2}, it is candidate-{c3})" in str(error)
    assert _decisions(registry, "p")[2:] == [("promote", c2, c3)]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_rollbacks_go_back_once(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    c1, c2, _ = _track(registry, tmp_path, "r")

    def rollback(_: threading.Barrier) -> object:
        return promotions.rollback(registry, track="r", actor="a", reason="r")

    _one_won(_released_together(monkeypatch, rollback, rollback))
    assert _decisions(registry, "r")[2:] == [("rollback", c2, c1)]
    # Not stuck: the next rollback has nowhere further back to go, and says so, not "already the champion".
    with pytest.raises(PromotionError, match=f"has no champion before candidate-{c1} to roll back to"):
        promotions.rollback(registry, track="r", actor="a", reason="r")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_hand_rollback_and_the_gates_promotion_record_one(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    """The gate measured candidate 3 against champion 2; a person rolls back to 1 meanwhile. Whichever records
    first wins; the other records nothing (a gate run that loses is run again, against the champion in place)."""
    c1, c2, c3 = _track(registry, tmp_path, "g")

    def gate(barrier: threading.Barrier) -> object:
        barrier.wait()
        with session_scope(registry.engine) as session:
            mine = runs.get_candidate(session, candidate_id=c3)
            return runs.record_gate_decision(
                session, candidate=mine, channel="production", scores={}, promote=True, reasons=["passed"], against=c2
            ).id

    def rollback(_: threading.Barrier) -> object:
        return promotions.rollback(registry, track="g", actor="a", reason="r")

    won, error = _one_won(_released_together(monkeypatch, gate, rollback))
    if won == 0:
        assert _decisions(registry, "g")[2:] == [("promote", c2, c3)]
        assert f"(it was candidate-{c2}, it is candidate-{c3})" in str(error)
    else:
        assert _decisions(registry, "g")[2:] == [("rollback", c2, c1)]
        assert f"against candidate-{c2}: candidate-{c1} is the champion now" in str(error)


def test_the_gate_records_nothing_against_a_champion_that_is_gone(registry: Registry, tmp_path: Path) -> None:
    c1, c2, c3 = _track(registry, tmp_path, "stale")
    with session_scope(registry.engine) as session:
        mine = runs.get_candidate(session, candidate_id=c3)
        with pytest.raises(ChampionChangedError) as raised:
            runs.record_gate_decision(
                session, candidate=mine, channel="production", scores={}, promote=False, reasons=["worse"], against=c1
            )
    assert str(raised.value) == (
        f"the champion of stale/production changed while the gate measured candidate-{c3} against candidate-{c1}: "
        f"candidate-{c2} is the champion now. Nothing is recorded; the release's run is run again, against the "
        "champion in place."
    )
    assert [d[0] for d in _decisions(registry, "stale")] == [GateDecision.PROMOTE.value] * 2
