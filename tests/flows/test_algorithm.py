"""Algorithm 1 end to end on the test bed, through Prefect: watch → recycle → eval → gate → promote."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from deployments.cli import app
from flows import recycle
from flows.registry import open_registry
from flows.settings import GraftSettings
from storage import registry as rows
from storage.db import session_scope
from storage.models import Candidate, Diff, EvalResult, Promotion
from tasks.gate import decide
from tasks.testbed import Testbed
from tests.flows.conftest import write_track

pytestmark = pytest.mark.slow
runner = CliRunner()


def _graft(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_three_releases_go_through_the_whole_flow(data_dir: Path, testbed: Testbed, tmp_path: Path) -> None:
    track = write_track(tmp_path, testbed, name="bed", releases=(2, 3, 4))
    assert "added track bed (local releases, iterative recycling)" in _graft("track", "add", str(track))
    assert "track bed: 3 new release(s) processed" in _graft("track", "watch", "bed")
    assert recycle.watch_releases(track="bed", dispatch="inline") == []  # seen releases run once

    gate = recycle.load_spec(track="bed").gate
    with session_scope(open_registry(GraftSettings()).engine) as session:
        candidates = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        diffs = list(session.scalars(select(Diff).order_by(Diff.id)))
        promotions = list(session.scalars(select(Promotion).order_by(Promotion.id)))
        assert len({c.release_id for c in candidates}) == 3
        assert [c.mode for c in candidates] == ["none", "iterative", "iterative"]
        # The Δ^iter chain: each release's Δ is taken from its candidate and has the previous one as parent.
        assert [d.candidate_id for d in diffs] == [c.id for c in candidates]
        assert [d.parent_id for d in diffs] == [None, diffs[0].id, diffs[1].id]
        assert [c.source_diff_id for c in candidates] == [None, diffs[0].id, diffs[1].id]
        subjects = sorted(session.scalars(select(EvalResult.subject)))
        assert subjects == ["base"] * 3 + ["candidate"] * 3 + ["transferred"] * 2
        champion = None
        assert len(promotions) == 3
        for candidate, promotion in zip(candidates, promotions, strict=True):
            evals = {
                s: [r for r in session.scalars(select(EvalResult).where(EvalResult.release_id == candidate.release_id))
                    if r.subject == s]
                for s in ("candidate", "base")
            }  # fmt: skip
            expected = decide(
                rules=gate,
                candidate=evals["candidate"],
                base=evals["base"],
                champion=None if champion is None else rows.eval_results(session, candidate=champion),
            )
            assert promotion.reasons == list(expected.reasons)
            assert promotion.decision == ("promote" if expected.promote else "reject")
            assert promotion.to_candidate_id == candidate.id
            if expected.promote:
                champion = candidate
    lineage = _graft("registry", "lineage", "bed")
    assert f"parent diff-{diffs[1].id}" in lineage


def test_a_crashed_run_resumes_after_its_last_completed_step(
    data_dir: Path, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _graft("track", "add", str(write_track(tmp_path, testbed, name="resume", releases=(3,))))
    trainings = []
    real_finetune = recycle.finetune

    def counted(**kwargs: object):  # type: ignore[no-untyped-def]
        trainings.append(kwargs["out_dir"])
        return real_finetune(**kwargs)  # type: ignore[arg-type]

    def crash(**kwargs: object) -> None:
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(recycle, "finetune", counted)
    monkeypatch.setattr(recycle, "decide", crash)
    with pytest.raises(RuntimeError, match="the machine went away"):
        recycle.watch_releases(track="resume", dispatch="inline")
    monkeypatch.setattr(recycle, "decide", decide)
    with session_scope(open_registry(GraftSettings()).engine) as session:
        [release] = rows.list_artifacts(session, kind="release")
        assert rows.list_artifacts(session, kind="promotion") == []
    decision = recycle.recycle_then_finetune(track="resume", release_id=release.id)
    assert len(trainings) == 1  # the fine-tune of the crashed run was not redone
    with session_scope(open_registry(GraftSettings()).engine) as session:
        assert len(rows.list_artifacts(session, kind="candidate")) == 1
        assert len(rows.list_artifacts(session, kind="diff")) == 1
        [promotion] = rows.list_artifacts(session, kind="promotion")
        assert promotion.reasons == list(decision.reasons)
