"""A track whose recipe trains in stages, SFT then DPO, through the product: `graft track add` checks every stage's
data, a watcher pass carries the Δ from M1 to M2 and runs both stages on each release, and the registry records
the candidate's fine-tune run with every stage's steps."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from graftwork.fs import file_sha256
from graftwork.operations.settings import Workspace
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, FinetuneRun, Promotion
from graftwork.tasks.testbed import Testbed
from graftwork.terms import ActorKind
from tests.flows.conftest import graft, write_track


def _stages(prefs: Path) -> dict[str, object]:
    return {"stages": [{"kind": "sft"}, {"kind": "dpo", "data": str(prefs), "steps": 10, "beta": 0.2}]}


def test_an_sft_then_dpo_track_carries_its_delta_and_records_both_stages(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    track = write_track(
        tmp_path, testbed, name="prefs", releases=(1, 2), steps=10, recipe=_stages(testbed.preference_data)
    )
    graft("track", "add", str(track))
    assert "track prefs: 2 new release(s), 2 run" in graft("track", "watch", "prefs")
    with session_scope(Workspace.from_settings().registry().engine) as session:
        candidates = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        assert len(candidates) == 2
        for candidate in candidates:
            run = session.get(FinetuneRun, candidate.finetune_run_id)
            assert run is not None and run.steps == 20  # 10 sft + 10 dpo
            assert [stage["kind"] for stage in run.recipe["stages"]] == ["sft", "dpo"]
            assert run.recipe["stages"][1]["data"] == str(testbed.preference_data)
            assert run.recipe["stages"][1]["data_sha256"] == file_sha256(testbed.preference_data)
            assert "data_sha256" not in run.recipe["stages"][0]  # the track's data, whose sha256 the run records
            assert run.data_sha256 == file_sha256(testbed.train_data)
            assert run.loss_curve_blob is not None
            with Workspace.from_settings().registry().store.reading(run.loss_curve_blob, owner="test") as blob:
                curve = json.loads(blob.read())
            assert [step for step, _ in curve] == list(range(1, 21))
        assert candidates[1].source_diff_id is not None  # M2's start is M2 + Δ of M1's SFT → DPO candidate
        assert all(p.actor_kind is ActorKind.GATE for p in session.scalars(select(Promotion)))
    for candidate in candidates:
        work = Path(candidate.model_uri).parent
        assert sorted(p.name for p in work.iterdir() if ".stage" in p.name) == []  # no stage's model left behind


def test_track_add_refuses_bad_preference_data_before_any_run(data_dir: Path, testbed: Testbed, tmp_path: Path) -> None:
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    track = write_track(tmp_path, testbed, name="bad", releases=(1,), recipe=_stages(prefs))
    err = graft("track", "add", str(track), code=1)
    assert f"{prefs}:2 is not a preference pair (it has chosen, prompt)" in err
    assert graft("track", "list") == "no tracks yet: `graft track add FILE`\n"
