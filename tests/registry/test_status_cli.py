"""`graft track status`, and `--json` on `graft track list/show/status` and `graft registry list/show/lineage`,
on both databases: a track whose releases are in every state, built with the registry's own operations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from graftwork.storage import evals, releases, runs
from graftwork.storage import registry as rows
from graftwork.storage.db import make_engine, session_scope
from graftwork.storage.models import Promotion, Release, Track
from graftwork.terms import ActorKind, CandidateKind, EvalSubject, GateDecision, RecycleMode, ReleaseState
from tests.registry.conftest import add_track, candidate, digest

SHA = {name: hashlib.sha1(name.encode()).hexdigest() for name in ("01-M1", "02-M2", "03-M3", "04-M4", "05-M5")}


def _score(value: float, metric: str = "exact_match") -> evals.Score:
    return evals.Score("testbed_add", metric, "none", value, None, 100, "0.4.13", None)


def _release(session: Session, track: Track, name: str, content: str) -> Release:
    found = releases.Found("local:/r", SHA[name], name, f"/r/{name}", name, content * 64)
    return releases.record(session, track=track, found=found)[0]


def _gated(
    session: Session, release: Release, scores: dict[EvalSubject, list[evals.Score]], reasons: list[str]
) -> None:
    """Release's candidate, scored and decided as a recycle run records it (promoted when no reason failed);
    the release is done."""
    made = candidate(session, release, mode=RecycleMode.ITERATIVE, uri=f"/m/{release.ref}")
    promote = not any(r.startswith("fail: ") for r in reasons)
    held = runs.champion(session, track=made.track, channel="production")
    runs.record_gate_decision(
        session, candidate=made, channel="production", scores=scores, promote=promote, reasons=reasons,
        against=None if held is None else held.id,
    )  # fmt: skip
    releases.mark(session, release=release, state=ReleaseState.DONE)


REJECTED = [
    "pass: testbed_add/exact_match: candidate 0.5000 ≥ base 0.3000 + margin 0.0000 = 0.3000",
    "fail: testbed_add/exact_match: candidate 0.5000 < champion 0.6000 + margin 0.0000 = 0.6000",
    "fail: testbed_add/exact_match: candidate 0.5000 < champion 0.6000 − tolerance 0.0200 = 0.5800",
]
PROMOTED = [
    "pass: testbed_add/exact_match: candidate 0.6000 ≥ base 0.2500 + margin 0.0000 = 0.2500",
    "pass: no champion yet on this channel",
]


def _build(database_url: str) -> None:
    """Track demo: 01-M1 promoted (and backported onto), 02-M2 rejected, 03-M3 skipped (02-M2's files), 04-M4
    failed, 05-M5 discovered."""
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        track = rows.get_track(session, name="demo")
        first, second, same, failed, _ = (
            _release(session, track, name, content)
            for name, content in (("01-M1", "a"), ("02-M2", "b"), ("03-M3", "b"), ("04-M4", "d"), ("05-M5", "e"))
        )
        base, cand = EvalSubject.BASE, EvalSubject.CANDIDATE
        _gated(session, first, {base: [_score(0.25)], cand: [_score(0.6), _score(0.99, "acc")]}, PROMOTED)
        ported = runs.record_candidate(
            session,
            release=first,
            mode=RecycleMode.ITERATIVE,
            alpha=1.0,
            model_uri="/m/backport",
            source_diff=None,
            finetune=None,
            kind=CandidateKind.BACKPORT,
        )
        evals.add_eval_results(session, scores=[_score(0.7)], subject=cand, candidate=ported, release=first)
        evals.add_eval_results(session, scores=[_score(0.25)], subject=base, release=first)
        scores = {base: [_score(0.3)], EvalSubject.TRANSFERRED: [_score(0.55)], cand: [_score(0.5)]}
        _gated(session, second, {**scores, EvalSubject.CHAMPION: [_score(0.6)]}, REJECTED)
        assert releases.status(session, release=same).state is ReleaseState.SKIPPED
        releases.mark(session, release=failed, state=ReleaseState.RUNNING, runner="h:1")
        releases.mark(session, release=failed, state=ReleaseState.FAILED, detail="RuntimeError: CUDA out of memory")
    engine.dispose()


def _row(n: int, name: str, state: str, **fields: Any) -> dict[str, Any]:
    """A release's row of `graft track status --json`: nothing run or decided unless `fields` say."""
    row = {
        "release": f"release-{n}",
        "label": f"release-{n} ({name})",
        "ref": name,
        "revision": SHA[name],
        "state": state,
        "detail": None,
        "attempts": 0,
        "retry_at": None,
        "candidate": None,
        "scores": {"base": None, "transferred": None, "candidate": None},
        "decision": None,
        "decided_by": None,
        "reasons": [],
        "reason": None,
        "champion": False,
        "reign": None,
        "waiting": False,
    }
    return {**row, **fields}


STATUS = {
    "track": "demo",
    "channel": "production",
    "metric": "testbed_add/exact_match",
    "champion": "candidate-1",
    "releases": [
        _row(
            1,
            "01-M1",
            "done",
            candidate="candidate-1",
            scores={"base": 0.25, "transferred": None, "candidate": 0.6},
            decision="promote",
            decided_by="gate",
            reasons=PROMOTED,
            reason=PROMOTED[-1],
            champion=True,
            reign="promote by gate",
        ),
        _row(
            2,
            "02-M2",
            "done",
            candidate="candidate-3",
            scores={"base": 0.3, "transferred": 0.55, "candidate": 0.5},
            decision="reject",
            decided_by="gate",
            reasons=REJECTED,
            reason=REJECTED[1],
        ),
        _row(3, "03-M3", "skipped", detail="its model files are those of release-2 (02-M2)"),
        _row(4, "04-M4", "failed", detail="RuntimeError: CUDA out of memory", attempts=1),
        _row(5, "05-M5", "discovered"),
    ],
}


def test_track_status_shows_each_release_at_a_glance(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    assert graft("track", "status", "demo") == "track demo has no releases yet (`graft track watch demo` looks)\n"
    _build(database_url)
    assert graft("track", "status", "demo").splitlines() == [
        "track demo: scores of testbed_add/exact_match (— where not scored); * marks the champion on production, "
        "candidate-1",
        "  release            sha           state         base  transferred  candidate  decision",
        f"* release-1 (01-M1)  {SHA['01-M1'][:12]}  done        0.2500            —     0.6000  promote "
        "(pass: no champion yet on this channel)",
        f"  release-2 (02-M2)  {SHA['02-M2'][:12]}  done        0.3000       0.5500     0.5000  reject "
        "(fail: testbed_add/exact_match: candidate 0.5000 < champion 0.6000 + margin 0.0000 = 0.6000)",
        f"  release-3 (03-M3)  {SHA['03-M3'][:12]}  skipped          —            —          —  —",
        f"  release-4 (04-M4)  {SHA['04-M4'][:12]}  failed           —            —          —  —",
        f"  release-5 (05-M5)  {SHA['05-M5'][:12]}  discovered       —            —          —  —",
    ]
    assert graft("track", "status", "demo", "--json") == json.dumps(STATUS, indent=2) + "\n"
    assert "error: no track named 'nope'" in graft("track", "status", "nope", code=1)
    engine = make_engine(database_url)
    with session_scope(engine) as session:  # the backport of 01-M1, promoted by hand, has no row
        ported = runs.get_candidate(session, candidate_id=2)
        runs.add_promotion(
            session,
            track=ported.track,
            channel="production",
            decision=GateDecision.PROMOTE,
            to_candidate=ported,
            reasons=["by hand"],
            actor_kind=ActorKind.USER,
            actor="ana",
        )
    engine.dispose()
    shown = graft("track", "status", "demo").splitlines()
    assert shown[0] == (
        "track demo: scores of testbed_add/exact_match (— where not scored); the champion on production is candidate-2"
    )
    assert (
        shown[2]
        == (  # candidate-1 is no longer the champion: its row has no *
            f"  release-1 (01-M1)  {SHA['01-M1'][:12]}  done        0.2500            —     0.6000  promote "
            "(pass: no champion yet on this channel)"
        )
    )


def test_track_show_says_why_each_candidate_was_decided(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    _build(database_url)
    shown = graft("track", "show", "demo")
    assert shown[shown.index("champion on") :] == "\n".join(
        [
            "champion on production: candidate-1 (/m/01-M1)",
            "decisions on the releases' candidates:",
            "  release-1 (01-M1): candidate-1, promote by gate",
            *(f"    {reason}" for reason in PROMOTED),
            "  release-2 (02-M2): candidate-3, reject by gate",
            *(f"    {reason}" for reason in REJECTED),
            "releases, in the source's order:",
            "  release-1 (01-M1): done",
            "  release-2 (02-M2): done",
            "  release-3 (03-M3): skipped (its model files are those of release-2 (02-M2))",
            "  release-4 (04-M4): failed (RuntimeError: CUDA out of memory)",
            "  release-5 (05-M5): discovered\n",
        ]
    )
    data = json.loads(graft("track", "show", "demo", "--json"))
    assert list(data) == ["track", "spec", "channel", "champion", "releases"]
    assert (data["track"], data["spec"]["name"], data["channel"]) == ("demo", "demo", "production")
    assert data["champion"]["public_id"] == "candidate-1" and data["champion"]["decisions"][0]["reasons"] == PROMOTED
    assert data["releases"] == STATUS["releases"]


def test_registry_show_says_why_a_candidate_was_rejected(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_track(graft, tmp_path, "demo")
    _build(database_url)
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        made = runs.get_candidate(session, candidate_id=3)
        decision = session.get(Promotion, 2)
        assert decision is not None
        results = evals.eval_results(session, candidate=made)
        at = {"candidate": made.created_at, "promotion": decision.created_at, "eval": results[0].created_at}
    engine.dispose()
    assert graft("registry", "show", "candidate-3").splitlines() == [
        f"candidate-3 on track demo, recorded {at['candidate']:%Y-%m-%d %H:%M:%S}",
        "  iterative α=1 for release-2: /m/02-M2",
        "  recycle, started from an unrecorded Δ (made before carry reasons)",
        "  eval testbed_add exact_match [none] = 0.5000 ± n/a (n=100, lm-eval 0.4.13)",
        "  promotion-2: reject on production by gate",
        *(f"    {reason}" for reason in REJECTED),
    ]
    assert graft("registry", "show", "candidate-2").splitlines()[-1] == "  no decision on it yet"  # the backport
    promotion = {
        "public_id": "promotion-2",
        "artifact": "promotion",
        "track": "demo",
        "id": 2,
        "track_id": 1,
        "channel": "production",
        "decision": "reject",
        "from_candidate_id": 1,
        "to_candidate_id": 3,
        "reasons": REJECTED,
        "actor_kind": "gate",
        "actor": "gate",
        "created_at": at["promotion"].isoformat(),
    }
    result = {
        "id": results[0].id,
        "candidate_id": 3,
        "release_id": 2,
        "subject": "candidate",
        "task": "testbed_add",
        "metric": "exact_match",
        "filter": "none",
        "value": 0.5,
        "stderr": None,
        "n": 100,
        "harness_version": "0.4.13",
        "task_version": None,
        "samples_blob": None,
        "fingerprint": None,
        "setup_sha256": None,
        "model_sha256": None,
        "created_at": at["eval"].isoformat(),
    }
    shown = {
        "public_id": "candidate-3",
        "artifact": "candidate",
        "track": "demo",
        "id": 3,
        "track_id": 1,
        "release_id": 2,
        "kind": "recycle",
        "mode": "iterative",
        "alpha": 1.0,
        "source_diff_id": None,
        "carry_reason": None,
        "start_choice": None,
        "finetune_run_id": None,
        "spec_id": None,
        "model_uri": "/m/02-M2",
        "created_at": at["candidate"].isoformat(),
        "finetune_run": None,
        "eval_results": [result],
        "decisions": [promotion],
    }
    assert graft("registry", "show", "candidate-3", "--json") == json.dumps(shown, indent=2) + "\n"
    assert graft("registry", "list", "--kind", "promotion", "--json").startswith("[\n  {\n")
    listed = json.loads(graft("registry", "list", "--kind", "promotion", "--json"))
    assert [p["public_id"] for p in listed] == ["promotion-1", "promotion-2"] and listed[1] == promotion


def test_track_list_and_registry_lineage_print_json(graft, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert graft("track", "list", "--json") == "[]\n"
    assert graft("registry", "lineage", "demo", "--json", code=1).startswith("error: no track named 'demo'")
    add_track(graft, tmp_path, "demo")
    assert graft("registry", "lineage", "demo", "--json") == "[]\n"
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        rows.save_track(session, name="broken", spec={"name": "broken"}, digest=digest({"name": "broken"}))
        track = rows.get_track(session, name="demo")
        stored = rows.StoredFile("diff.json", "a" * 64, 10, "b" * 64, 8, "zstd")
        ids: list[int] = []
        for key in ("1", "2"):
            new = rows.NewDiff(
                key=key * 64,
                finetuned={"repo_id": "org/m-ft"},
                base={"repo_id": f"org/m-{key}"},
                tensor_count=2,
                norms={"w": 1.5},
                codec="zstd",
                graftwork_version="0.1",
                files=(stored,),
                parent_id=ids[-1] if ids else None,
            )
            ids.append(rows.add_diff(session, track=track, diff=new)[0].id)
        made = [rows.get_diff(session, ref=str(i)).created_at.isoformat() for i in ids]
    engine.dispose()
    lineage = [
        {
            "public_id": f"diff-{i}",
            "artifact": "diff",
            "track": "demo",
            "id": i,
            "track_id": 1,
            "key": key * 64,
            "parent_id": parent,
            "base_release_id": None,
            "candidate_id": None,
            "finetuned": {"repo_id": "org/m-ft"},
            "base": {"repo_id": f"org/m-{key}"},
            "tensor_count": 2,
            "norms": {"w": 1.5},
            "codec": "zstd",
            "raw_bytes": 10,
            "stored_bytes": 8,
            "graftwork_version": "0.1",
            "created_at": at,
        }
        for i, key, parent, at in zip(ids, "12", (None, ids[0]), made, strict=True)
    ]
    assert graft("registry", "lineage", "demo", "--json") == json.dumps(lineage, indent=2) + "\n"
    invalid = "track broken in the registry is not a valid track: source: Field required; finetune: Field required; "
    invalid += "eval: Field required; gate: Field required"
    assert graft("track", "list").splitlines() == [
        "track                    source     mode       channel",
        f"broken                   invalid spec: {invalid}",
        "demo                     hub-repos  iterative  production",
    ]
    assert json.loads(graft("track", "list", "--json")) == [
        {"track": "broken", "source": None, "mode": None, "channel": None, "error": invalid},
        {"track": "demo", "source": "hub-repos", "mode": "iterative", "channel": "production", "error": None},
    ]
    shown = json.loads(graft("registry", "show", f"diff-{ids[1]}", "--json"))
    assert shown["lineage"] == [f"diff-{ids[1]}", f"diff-{ids[0]}"]
    assert shown["files"] == [
        {
            "id": shown["files"][0]["id"],
            "diff_id": ids[1],
            "path": "diff.json",
            "raw_sha256": "a" * 64,
            "raw_bytes": 10,
            "blob_sha256": "b" * 64,
            "stored_bytes": 8,
            "codec": "zstd",
        }
    ]


def test_a_release_keeps_its_gate_decision_and_the_champion_says_how_it_came_back(  # type: ignore[no-untyped-def]
    graft, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a hand promotion of the rejected candidate-3 and a rollback to candidate-1, each release's row still
    shows its own candidate's gate decision with the reason that decided it, and the champion's row says it
    is champion again by the rollback (not "rollback" as if it had been rolled back)."""
    monkeypatch.setenv("LOGNAME", "alice")
    add_track(graft, tmp_path, "demo")
    _build(database_url)
    graft("promote", "candidate-3", "--reason", "reads better")
    graft("rollback", "demo")
    table = graft("track", "status", "demo").splitlines()
    assert table[2:4] == [
        f"* release-1 (01-M1)  {SHA['01-M1'][:12]}  done        0.2500            —     0.6000  promote "
        "(pass: no champion yet on this channel); champion now by rollback by alice",
        f"  release-2 (02-M2)  {SHA['02-M2'][:12]}  done        0.3000       0.5500     0.5000  reject "
        "(fail: testbed_add/exact_match: candidate 0.5000 < champion 0.6000 + margin 0.0000 = 0.6000)",
    ]
    shown = graft("track", "show", "demo")
    assert "  release-1 (01-M1): candidate-1, promote by gate; the champion now, by rollback by alice\n" in shown
    assert "  release-2 (02-M2): candidate-3, reject by gate\n" in shown
