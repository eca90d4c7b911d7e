"""`graft promote`, `graft rollback` and `graft history` on both databases: rollbacks walk back along the
channel's history (never forth), another track's candidate is refused, the actor is the user running the
command, and a publishing track's channel tag follows on the Hub (the write-side fake of tests/hub_fixtures.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants
from sqlalchemy import select

from graftwork.storage import registry as rows
from graftwork.storage import runs
from graftwork.storage.db import make_engine, session_scope
from graftwork.storage.models import Promotion
from graftwork.tasks.gate import GateRules, MetricRef, decide
from graftwork.terms import ActorKind, GateDecision, RecycleMode
from tests.conftest import VOCAB, random_state, save_model
from tests.hub_fixtures import FakeHubWrites, git
from tests.registry.conftest import add_track, candidate, record_release, track_spec

TOKEN = "hf_graftworkPromotionTestToken0123456789"


@pytest.fixture(autouse=True)
def alice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run as the OS user alice (getpass reads LOGNAME first)."""
    monkeypatch.setenv("LOGNAME", "alice")


def _candidates(database_url: str, track: str, uris: list[str]) -> list[int]:
    """One release and one candidate of `track` per model uri; their candidate ids."""
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        owner = rows.get_track(session, name=track)
        made = []
        for n, uri in enumerate(uris, 1):
            release, _ = record_release(session, track=owner, repo_id="org/m", revision=f"{n:040d}", ref=f"m-{n}")
            made.append(candidate(session, release, mode=RecycleMode.ITERATIVE, uri=uri).id)
    engine.dispose()
    return made


def _rows(database_url: str) -> list[tuple[str, int | None, int | None, str, str, list[str]]]:
    """Every promotion row: decision, from, to, actor kind, actor, reasons."""
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        found = [
            (p.decision.value, p.from_candidate_id, p.to_candidate_id, p.actor_kind.value, p.actor, p.reasons)
            for p in session.scalars(select(Promotion).order_by(Promotion.id))
        ]
    engine.dispose()
    return found


def test_promote_then_roll_back_twice_walks_back_and_never_forth(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    c1, c2, c3 = _candidates(database_url, "demo", ["/m/1", "/m/2", "/m/3"])
    assert graft("promote", f"candidate-{c1}") == (
        f"candidate-{c1} is the champion of demo/production (promotion-1, by alice; no champion before)\n"
    )
    assert graft("promote", str(c2)) == (
        f"candidate-{c2} is the champion of demo/production (promotion-2, by alice; it replaced candidate-{c1})\n"
    )
    assert graft("promote", f"candidate-{c3}", "--track", "demo", "--reason", "M3 reads better") == (
        f"candidate-{c3} is the champion of demo/production (promotion-3, by alice; it replaced candidate-{c2})\n"
    )
    assert graft("rollback", "demo") == (
        f"candidate-{c2} is again the champion of demo/production (promotion-4, by alice; it replaced candidate-{c3})\n"
    )
    # The old rollback went back to the champion candidate-2 replaced in its last reign: candidate-3, forth.
    assert graft("rollback", "demo") == (
        f"candidate-{c1} is again the champion of demo/production (promotion-5, by alice; it replaced candidate-{c2})\n"
    )
    assert graft("rollback", "demo", code=1) == (
        f"error: demo/production has no champion before candidate-{c1} to roll back to; `graft history demo` "
        "shows its decisions, and `graft promote CANDIDATE` promotes another candidate.\n"
    )
    t = _times(database_url)
    assert graft("registry", "show", "promotion-1") == (  # it said 'from candidate-None'
        f"promotion-1 on track demo, recorded {t[0]}\n"
        f"  promote on production: candidate-{c1} (promoted by hand)\n"
        "  no champion before, by alice\n"
    )
    assert graft("registry", "show", "promotion-4").endswith(f"\n  from candidate-{c3}, by alice\n")
    assert _rows(database_url) == [
        ("promote", None, c1, "user", "alice", ["promoted by hand"]),
        ("promote", c1, c2, "user", "alice", ["promoted by hand"]),
        ("promote", c2, c3, "user", "alice", ["M3 reads better"]),
        ("rollback", c3, c2, "user", "alice", ["rolled back by hand"]),
        ("rollback", c2, c1, "user", "alice", ["rolled back by hand"]),
    ]


def test_rollback_to_an_earlier_champion_only(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    c1, c2, c3, c4 = _candidates(database_url, "demo", ["/m/1", "/m/2", "/m/3", "/m/4"])
    for c in (c1, c2, c3, c4):
        graft("promote", f"candidate-{c}")
    assert graft("rollback", "demo", "--to", f"candidate-{c2}", "--reason", "M3 and M4 regress on chat") == (
        f"candidate-{c2} is again the champion of demo/production (promotion-5, by alice; it replaced candidate-{c4})\n"
    )
    for later in (c3, c4):  # rolled back over: forth, not back
        assert graft("rollback", "demo", "--to", str(later), code=1) == (
            f"error: candidate-{later} was not a champion of demo/production before candidate-{c2} (a rollback goes "
            f"back, to one of: candidate-{c1}); `graft promote candidate-{later}` promotes it instead.\n"
        )
    assert graft("rollback", "demo", "--to", str(c2), code=1) == (
        f"error: candidate-{c2} is the champion of demo/production already; nothing to do.\n"
    )
    assert "candidate-4 is the champion" in graft("promote", f"candidate-{c4}")
    assert graft("rollback", "demo") == (
        f"candidate-{c2} is again the champion of demo/production (promotion-7, by alice; it replaced candidate-{c4})\n"
    )
    assert [(d, f, t) for d, f, t, *_ in _rows(database_url)][4:] == [
        ("rollback", c4, c2),
        ("promote", c2, c4),
        ("rollback", c4, c2),
    ]


def test_another_tracks_candidate_and_the_champion_itself_are_refused(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    add_track(graft, tmp_path, "other")
    mine, next_one = _candidates(database_url, "demo", ["/m/1", "/m/2"])
    (theirs,) = _candidates(database_url, "other", ["/o/1"])
    assert graft("promote", f"candidate-{theirs}", "--track", "demo", code=1) == (
        f"error: candidate-{theirs} is a candidate of track other, not of demo; a channel's champion must be one of "
        "its own track's candidates.\n"
    )
    assert graft("rollback", "demo", code=1) == (
        "error: demo/production has no champion yet, so there is nothing to roll back; `graft promote CANDIDATE` "
        "makes one.\n"
    )
    graft("promote", f"candidate-{mine}")
    assert graft("promote", f"candidate-{mine}", code=1) == (
        f"error: candidate-{mine} is the champion of demo/production already; nothing to do.\n"
    )
    graft("promote", f"candidate-{next_one}")
    assert graft("rollback", "demo", "--to", f"candidate-{theirs}", code=1) == (
        f"error: candidate-{theirs} is a candidate of track other, not of demo; a channel's champion must be one of "
        "its own track's candidates.\n"
    )
    assert graft("promote", "candidate-99", code=1) == (
        "error: no candidate with id 99 in the registry; `graft registry list` shows what there is.\n"
    )
    assert graft("promote", "release-1", code=1) == "error: release-1 is a release, not a candidate.\n"
    assert graft("history", "nope", code=1) == (
        "error: no track named 'nope' in the registry (tracks: demo, other); add it with `graft track add FILE`.\n"
    )
    assert [(d, f, t) for d, f, t, *_ in _rows(database_url)] == [("promote", None, mine), ("promote", mine, next_one)]


RULES = GateRules(metrics=(MetricRef(task="testbed_add", metric="exact_match"),), beat_base_by=0.1)


def _gate(database_url: str, *, candidate_id: int, value: float, base: float, champion: float | None) -> None:
    """Record the gate's decision on a candidate, with the reasons `decide` gives for these scores."""

    class Score:
        task, metric, filter, stderr = "testbed_add", "exact_match", "none", None

        def __init__(self, value: float) -> None:
            self.value = value

    verdict = decide(
        rules=RULES,
        candidate=[Score(value)],
        base=[Score(base)],
        champion=None if champion is None else [Score(champion)],
    )
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        made = runs.get_candidate(session, candidate_id=candidate_id)
        runs.add_promotion(
            session,
            track=made.track,
            channel="production",
            decision=GateDecision.PROMOTE if verdict.promote else GateDecision.REJECT,
            to_candidate=made,
            reasons=list(verdict.reasons),
            actor_kind=ActorKind.GATE,
            actor=ActorKind.GATE.value,
        )
    engine.dispose()


def _times(database_url: str) -> list[str]:
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        found = [p.created_at for p in session.scalars(select(Promotion).order_by(Promotion.id))]
    engine.dispose()
    return [f"{t:%Y-%m-%d %H:%M:%S}" for t in found]


def test_history_shows_every_decision_with_time_actor_and_reasons(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    assert graft("history", "demo") == "no decisions on demo/production yet\n"
    c1, c2 = _candidates(database_url, "demo", ["/m/1", "/m/2"])
    _gate(database_url, candidate_id=c1, value=0.39, base=0.0, champion=None)
    _gate(database_url, candidate_id=c2, value=0.38, base=0.0, champion=0.39)
    graft("promote", f"candidate-{c2}", "--reason", "better on the chat suite")
    graft("rollback", "demo")
    t = _times(database_url)
    assert graft("history", "demo") == (
        f"history of demo/production, oldest first; champion now: candidate-{c1}\n"
        f"promotion-1   {t[0]}  promote   candidate-{c1}, no champion before, by the gate\n"
        "    pass: testbed_add/exact_match: candidate 0.3900 ≥ base 0.0000 + margin 0.1000 = 0.1000\n"
        "    pass: no champion yet on this channel\n"
        f"promotion-2   {t[1]}  reject    candidate-{c2}, candidate-{c1} stays, by the gate\n"
        "    pass: testbed_add/exact_match: candidate 0.3800 ≥ base 0.0000 + margin 0.1000 = 0.1000\n"
        "    fail: testbed_add/exact_match: candidate 0.3800 < champion 0.3900 + margin 0.0000 = 0.3900\n"
        "    pass: testbed_add/exact_match: candidate 0.3800 ≥ champion 0.3900 − tolerance 0.0200 = 0.3700\n"
        f"promotion-3   {t[2]}  promote   candidate-{c2}, replacing candidate-{c1}, by alice\n"
        "    better on the chat suite\n"
        f"promotion-4   {t[3]}  rollback  candidate-{c1}, replacing candidate-{c2}, by alice\n"
        "    rolled back by hand\n"
    )
    story = json.loads(graft("history", "demo", "--json"))
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        iso = [p.created_at.isoformat() for p in session.scalars(select(Promotion).order_by(Promotion.id))]
    engine.dispose()
    assert story["track"] == "demo" and story["channel"] == "production" and story["champion"] == f"candidate-{c1}"
    assert story["decisions"][1] == {
        "id": "promotion-2",
        "time": iso[1],
        "decision": "reject",
        "candidate": f"candidate-{c2}",
        "replaced": f"candidate-{c1}",
        "actor_kind": "gate",
        "actor": "gate",
        "reasons": [
            "pass: testbed_add/exact_match: candidate 0.3800 ≥ base 0.0000 + margin 0.1000 = 0.1000",
            "fail: testbed_add/exact_match: candidate 0.3800 < champion 0.3900 + margin 0.0000 = 0.3900",
            "pass: testbed_add/exact_match: candidate 0.3800 ≥ champion 0.3900 − tolerance 0.0200 = 0.3700",
        ],
    }
    assert [(d["id"], d["decision"], d["actor"]) for d in story["decisions"]] == [
        ("promotion-1", "promote", "gate"),
        ("promotion-2", "reject", "gate"),
        ("promotion-3", "promote", "alice"),
        ("promotion-4", "rollback", "alice"),
    ]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHubWrites]:
    """The write side of a Hub (tests/hub_fixtures.py), which huggingface_hub reaches the Hub's own way."""
    server = FakeHubWrites(tmp_path / "mirrors", token=TOKEN)
    server.start()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    try:
        yield server
    finally:
        server.stop()


def test_the_channel_tag_follows_promote_and_rollback_on_a_publishing_track(  # type: ignore[no-untyped-def]
    graft, hub: FakeHubWrites, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q: 1+1?", "completion": "2"}\n')
    spec = track_spec("pub", {"kind": "hub-repos", "author": "org", "name_pattern": "m-*"})
    spec |= {"finetune": {"data": str(data)}, "publish": {"repo": "acme/champ"}}
    (tmp_path / "pub.yaml").write_text(yaml.safe_dump(spec))
    graft("track", "add", str(tmp_path / "pub.yaml"))
    models = [
        save_model(tmp_path / f"c{n}", random_state(seed=n, vocab_size=len(VOCAB), dtype=torch.bfloat16))
        for n in (1, 2)
    ]
    c1, c2 = _candidates(database_url, "pub", [str(m) for m in models])
    repo = tmp_path / "mirrors" / "models" / "acme" / "champ"

    def tagged() -> str:
        return git(repo, "rev-parse", "production^{commit}")

    first = graft("promote", f"candidate-{c1}")
    assert first == (
        f"candidate-{c1} is the champion of pub/production (promotion-1, by alice; no champion before)\n"
        f"Hub tag production of acme/champ now points at commit {tagged()[:12]}\n"
    )
    at_first = tagged()
    graft("promote", f"candidate-{c2}")
    assert tagged() != at_first
    assert git(repo, "log", "-1", "--format=%s", tagged()) == f"Graftwork: candidate-{c2} on pub/production"
    assert graft("rollback", "pub").endswith(f"Hub tag production of acme/champ now points at commit {tagged()[:12]}\n")
    # Back on candidate-1's files: the tag's tree is the first promotion's.
    assert git(repo, "rev-parse", "production^{tree}") == git(repo, "rev-parse", f"{at_first}^{{tree}}")
    assert git(repo, "tag", "--list").split() == ["production"]

    monkeypatch.setenv("HF_TOKEN", "hf_notTheRightToken")  # a Hub failure records nothing
    before = tagged()
    error = graft("promote", f"candidate-{c2}", code=1)
    assert error == (
        f"error: The Hub at {hub.url} refused access to acme/champ (HTTP 401). Set HF_TOKEN (or pass a token) that "
        "can read it, or write to it when publishing.\n"
    )
    assert tagged() == before and len(_rows(database_url)) == 3
