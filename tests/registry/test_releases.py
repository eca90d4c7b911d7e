"""A track's releases in their source's order, with states, on SQLite and PostgreSQL: what a watcher pass
may start, when a failed run may run again, and which Δ a run carries."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from graftwork.errors import NotFoundError, ReleaseChangedError, ReleaseOrderError
from graftwork.storage import Registry, releases, runs
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, Release, Track
from graftwork.terms import ActorKind, CarryRule, GateDecision, RecycleMode, ReleaseState
from tests.registry.conftest import candidate, record_release, track_named

POLICY = releases.RetryPolicy(limit=2, backoff=timedelta(minutes=2), stale_after=timedelta(minutes=10))


def _found(name: str, position: str, content: str) -> releases.Found:
    """A release of folder `name` whose model files are `content`."""
    revision = hashlib.sha1(name.encode()).hexdigest()
    return releases.Found("local:/r", revision, name, f"/r/{name}", position, content * 64)


def _record(session: Session, track: Track, *found: releases.Found) -> list[Release]:
    return [releases.record(session, track=track, found=f)[0] for f in found]


def test_releases_run_in_their_sources_order_one_after_the_other(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        # Discovered out of order: the source's order (the folder names) wins over the order of arrival.
        late, early = _record(session, track, _found("02-b", "002-b", "b"), _found("01-a", "001-a", "a"))
        assert releases.in_order(session, track=track) == [early, late]
        now = datetime.now(UTC)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=now) == early
        releases.mark(session, release=early, state=ReleaseState.RUNNING, runner="h:1")
        assert releases.next_to_run(session, track=track, policy=POLICY, now=now) is None  # `late` waits
        releases.mark(session, release=early, state=ReleaseState.DONE)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=now) == late


def test_an_unchanged_release_is_skipped_and_a_failed_one_waits_its_backoff_up_to_the_limit(
    registry: Registry,
) -> None:
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        first, same, other = _record(
            session, track, _found("01", "001", "a"), _found("02", "002", "a"), _found("03", "003", "c")
        )
        assert releases.status(session, release=same).state is ReleaseState.SKIPPED
        assert releases.status(session, release=same).detail == f"its model files are those of {releases.label(first)}"
        assert releases.previous(session, release=other) == first  # a skipped release is passed over
        releases.mark(session, release=first, state=ReleaseState.RUNNING, runner="h:1")
        row = releases.fail(session, release=first, detail="boom", policy=POLICY, died=False)
        assert row.retry_at is not None and row.retry_at - datetime.now(UTC) > timedelta(minutes=1)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=datetime.now(UTC)) is None
        later = datetime.now(UTC) + timedelta(minutes=3)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=later) == first
        releases.mark(session, release=first, state=ReleaseState.RUNNING, runner="h:2")
        row = releases.fail(session, release=first, detail="boom again", policy=POLICY, died=True)
        assert row.attempts == 2 and row.retry_at is not None and row.retry_at <= datetime.now(UTC)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=later) is None  # the limit: 2 runs
        releases.retry(session, release=first)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=datetime.now(UTC)) == first
        with pytest.raises(NotFoundError, match=r"release-\d+ \(02\) is skipped: there is nothing to retry"):
            releases.retry(session, release=same)


def test_a_release_repaired_in_place_supersedes_the_one_it_was_and_is_not_waited_behind(registry: Registry) -> None:
    """01 failed; its folder, repaired in place, is a new release 01' that holds its files now: 01 is superseded
    (never run again, retried or carried from), 01' runs next; a release that was done is never superseded; and
    a release whose files come back holds its folder again."""
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        broken, second = _record(session, track, _found("01", "001", "a"), _found("02", "002", "b"))
        releases.mark(session, release=broken, state=ReleaseState.RUNNING, runner="h:1")
        releases.fail(session, release=broken, detail="ModelFolderError: bad header", policy=POLICY, died=False)
        repaired = _record(session, track, releases.Found("local:/r", "f" * 40, "01", "/r/01", "001", "c" * 64))[0]
        assert releases.in_order(session, track=track) == [broken, repaired, second]
        assert releases.holds_its_folder(session, release=repaired) == [broken]
        why = f"its files changed since it was seen; release-{repaired.id} (01) holds them now"
        row = releases.status(session, release=broken)
        assert (row.state, row.detail, row.retry_at) == (ReleaseState.SUPERSEDED, why, None)
        assert releases.describe(row, policy=POLICY) == f"superseded ({why})"
        assert releases.holds_its_folder(session, release=repaired) == []  # once
        now = datetime.now(UTC)
        assert releases.next_to_run(session, track=track, policy=POLICY, now=now) == repaired
        assert releases.previous(session, release=repaired) is None
        assert releases.previous(session, release=second) == repaired
        refused = (
            f"release-{broken.id} (01) is superseded: {why} and runs in its place, so release-{broken.id} (01) is "
            "never run again (`graft track show t` shows both)."
        )
        with pytest.raises(ReleaseChangedError) as raised:
            releases.retry(session, release=broken)
        assert str(raised.value) == refused
        with pytest.raises(ReleaseChangedError, match=re.escape(refused)):
            releases.check_current(session, release=broken)
        releases.check_current(session, release=repaired)
        assert releases.by_name(session, track=track, name="01") == repaired  # the folder's name: the one in effect

        releases.mark(session, release=second, state=ReleaseState.DONE)
        replaced = _record(session, track, releases.Found("local:/r", "e" * 40, "02", "/r/02", "002", "e" * 64))[0]
        assert releases.holds_its_folder(session, release=replaced) == []  # a done release is history
        assert releases.status(session, release=second).state is ReleaseState.DONE

        assert releases.holds_its_folder(session, release=broken) == [repaired]  # its files are back
        back = releases.status(session, release=broken)
        assert (back.state, back.attempts, back.detail) == (ReleaseState.DISCOVERED, 0, "its files are back in /r/01")
        assert releases.status(session, release=repaired).state is ReleaseState.SUPERSEDED
        assert releases.next_to_run(session, track=track, policy=POLICY, now=now) == broken
        hub = record_release(session, track=track, repo_id="o/m", revision="d" * 40, ref="01")[0]
        assert releases.holds_its_folder(session, release=hub) == []  # a Hub release has no folder


def test_a_release_is_named_by_id_ref_or_sha(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        one, two = _record(session, track, _found("01-M1", "001", "a"), _found("02-M2", "002", "b"))
        assert releases.by_name(session, track=track, name=f"release-{two.id}") == two
        assert releases.by_name(session, track=track, name="01-M1") == one
        assert releases.by_name(session, track=track, name=two.revision[:9]) == two
        with pytest.raises(NotFoundError, match=r"'03' names none of track t's releases \(they are: release-\d+"):
            releases.by_name(session, track=track, name="03")


def test_the_carry_rule_picks_the_previous_releases_delta_or_the_champions(registry: Registry) -> None:
    """previous: the Δ of the release before this one in the track's order, not the newest registered;
    champion: the promoted candidate's; source: the first Δ of the chosen lineage; and a run whose
    predecessor is not done is refused, naming it."""
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        a, b, c, d = _record(session, track, *(_found(f"0{i}", f"00{i}", x) for i, x in enumerate("abcd", 1)))
        first = runs.carry(session, release=a, mode=RecycleMode.ITERATIVE, rule=CarryRule.PREVIOUS, channel="p")
        assert first.diff is None and first.reason.startswith("none: the track's first release")
        deltas = {}
        for release, parent in ((b, None), (a, None), (c, "02")):  # 01 was backfilled: its Δ is registered after 02's
            made = candidate(session, release, mode=RecycleMode.ITERATIVE, uri=f"/m/{release.ref}")
            deltas[release.ref] = _delta(session, track, release, made, parent=deltas.get(parent))
            releases.mark(session, release=release, state=ReleaseState.DONE)
        releases.mark(session, release=c, state=ReleaseState.RUNNING, runner="h:1")
        with pytest.raises(
            ReleaseOrderError, match=r"release-\d+ \(04\) carries from release-\d+ \(03\), which is running"
        ):
            runs.carry(session, release=d, mode=RecycleMode.ITERATIVE, rule=CarryRule.PREVIOUS, channel="p")
        releases.mark(session, release=c, state=ReleaseState.DONE)

        previous = runs.carry(session, release=d, mode=RecycleMode.ITERATIVE, rule=CarryRule.PREVIOUS, channel="p")
        assert previous.diff == deltas["03"]
        assert previous.reason.endswith("(the release before this one in the track's order)")
        later = runs.carry(session, release=c, mode=RecycleMode.ITERATIVE, rule=CarryRule.PREVIOUS, channel="p")
        assert later.diff == deltas["02"]  # not 01's, the newest registered: 02 is before 03 in the order
        source = runs.carry(session, release=d, mode=RecycleMode.SOURCE, rule=CarryRule.PREVIOUS, channel="p")
        assert source.diff == deltas["02"]  # 03's Δ follows 02's: 02's is its lineage's first
        none = runs.carry(session, release=d, mode=RecycleMode.NONE, rule=CarryRule.PREVIOUS, channel="p")
        assert none.diff is None

        unpromoted = runs.carry(session, release=d, mode=RecycleMode.ITERATIVE, rule=CarryRule.CHAMPION, channel="p")
        assert unpromoted.diff == deltas["03"] and "no champion on p yet" in unpromoted.reason
        champion = session.get(Candidate, deltas["01"].candidate_id)
        runs.add_promotion(
            session, track=track, channel="p", decision=GateDecision.PROMOTE, to_candidate=champion, reasons=[],
            actor_kind=ActorKind.GATE, actor="gate",
        )  # fmt: skip
        champ = runs.carry(session, release=d, mode=RecycleMode.ITERATIVE, rule=CarryRule.CHAMPION, channel="p")
        assert champ.diff == deltas["01"] and champ.reason.endswith("(the champion of p)")


def _delta(session: Session, track: Track, release: Release, made: Candidate, *, parent: Diff | None) -> Diff:
    key = f"{release.id}".ljust(64, "0")
    new = rows.NewDiff(
        key=key, finetuned={}, base={}, tensor_count=0, norms={}, codec="c", graftwork_version="0", files=(),
        parent_id=None if parent is None else parent.id, candidate_id=made.id, base_release_id=release.id,
    )  # fmt: skip
    return rows.add_diff(session, track=track, diff=new)[0]
