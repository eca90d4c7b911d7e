"""The `promote` and `rollback` flows (the deployments of the same names) run through Prefect: the actor
recorded is who started the run as Prefect knows them (`prefect` on a server that records no users), never a
parameter; a rollback walks back along the channel's history."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from graftwork.flows.oneoff import promote, rollback
from graftwork.operations.settings import Workspace
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import Promotion
from graftwork.terms import RecycleMode
from tests.registry.conftest import candidate, digest, record_release, track_spec


def test_the_flows_record_prefect_as_the_actor_and_roll_back_along_the_history(data_dir: Path, tmp_path: Path) -> None:
    registry = Workspace.at(None).registry()
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q: 1+1?", "completion": "2"}\n')
    spec = track_spec("demo", {"kind": "hub-repos", "author": "org", "name_pattern": "m-*"})
    with session_scope(registry.engine) as session:
        track, _ = rows.save_track(
            session, name="demo", spec=(given := spec | {"finetune": {"data": str(data)}}), digest=digest(given)
        )
        made = []
        for n in (1, 2, 3):
            release, _ = record_release(session, track=track, repo_id="org/m", revision=f"{n:040d}", ref=f"m-{n}")
            made.append(candidate(session, release, mode=RecycleMode.ITERATIVE, uri=f"/m/{n}").id)
    c1, c2, c3 = made
    for c in made:
        promote(track="demo", candidate=c)
    assert rollback(track="demo") == (
        f"candidate-{c2} is again the champion of demo/production (promotion-4, by prefect; it replaced candidate-{c3})"
    )
    assert rollback(track="demo", to=c1, reason="back to the first") == (
        f"candidate-{c1} is again the champion of demo/production (promotion-5, by prefect; it replaced candidate-{c2})"
    )
    with session_scope(registry.engine) as session:
        found = [
            (p.decision.value, p.from_candidate_id, p.to_candidate_id, p.actor_kind.value, p.actor, p.reasons)
            for p in session.scalars(select(Promotion).order_by(Promotion.id))
        ]
    assert found == [
        ("promote", None, c1, "user", "prefect", ["promoted by hand"]),
        ("promote", c1, c2, "user", "prefect", ["promoted by hand"]),
        ("promote", c2, c3, "user", "prefect", ["promoted by hand"]),
        ("rollback", c3, c2, "user", "prefect", ["rolled back by hand"]),
        ("rollback", c2, c1, "user", "prefect", ["back to the first"]),
    ]
