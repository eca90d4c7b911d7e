"""Algorithm 1 end to end on the test bed, through Prefect: watch → recycle → eval → gate → promote."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError
from sqlalchemy import select
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.flows import gating, recycle
from graftwork.flows.watch import watch_releases
from graftwork.fs import file_sha256
from graftwork.operations.progress import listening
from graftwork.operations.settings import Workspace
from graftwork.operations.tracks import load_spec
from graftwork.storage import evals
from graftwork.storage import registry as rows
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff, EvalResult, Promotion
from graftwork.tasks.gate import decide
from graftwork.tasks.testbed import Testbed
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
    watched = _graft("track", "watch", "bed").splitlines()
    said = watched[watched.index("track bed: 3 new release(s), 3 run") + 1 :]
    assert [line.split(": ")[0] for line in said] == [f"  release-{i} (0{i}-M{i + 1})" for i in (1, 2, 3)]
    assert all(re.fullmatch(r"  release-\d \(0\d-M\d\): (promote|reject) \(.+\)", line) for line in said), said
    again = watch_releases(track="bed", dispatch="inline")
    assert (again.new, again.started, again.waiting) == ([], [], None)  # seen releases run once

    gate = load_spec(Workspace.from_settings().registry(), track="bed").gate
    with session_scope(Workspace.from_settings().registry().engine) as session:
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
            scored = {
                s: [r for r in session.scalars(select(EvalResult).where(EvalResult.release_id == candidate.release_id))
                    if r.subject == s]
                for s in ("candidate", "base")
            }  # fmt: skip
            expected = decide(
                rules=gate,
                candidate=scored["candidate"],
                base=scored["base"],
                champion=None if champion is None else evals.eval_results(session, candidate=champion),
            )
            assert promotion.reasons == list(expected.reasons)
            assert promotion.decision == ("promote" if expected.promote else "reject")
            assert promotion.to_candidate_id == candidate.id
            if expected.promote:
                champion = candidate
    lineage = _graft("registry", "lineage", "bed")
    assert f"parent diff-{diffs[1].id}" in lineage
    _each_candidate_has_its_finetune_run(data_dir, gate_steps=30)


def _each_candidate_has_its_finetune_run(data_dir: Path, *, gate_steps: int) -> None:
    registry = Workspace.from_settings().registry()
    with session_scope(registry.engine) as session:
        candidates = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        for candidate in candidates:
            run = candidate.finetune_run
            assert run is not None and (run.track_id, run.release_id) == (candidate.track_id, candidate.release_id)
            assert (run.steps, run.recipe["steps"], run.device, run.processes) == (gate_steps, gate_steps, "cpu", 1)
            assert candidate.spec is not None and candidate.spec.version == 1  # the track's spec it was made with
            assert run.data_sha256 == file_sha256(Path(candidate.spec.spec["finetune"]["data"]))
            assert run.tokens > 0 and run.tokens_per_second > 0 and run.started_at < run.finished_at
            curve = io.BytesIO()
            registry.store.read_into(run.loss_curve_blob, curve, owner="test")  # type: ignore[arg-type]
            steps = [step for step, _ in json.loads(curve.getvalue())]
            assert steps == list(range(1, gate_steps + 1)) and json.loads(curve.getvalue())[-1][1] == run.final_loss
        last, run = rows.public_id(candidates[-1]), candidates[-1].finetune_run
    shown = _graft("registry", "show", last)
    eval_line = r"\n  eval testbed_add exact_match \[none\] = \d\.\d{4} ± (\d\.\d{4}|n/a) \(n=\d+, lm-eval "
    assert re.search(eval_line, shown)
    assert "\n  no champion before, by gate\n" in _graft("registry", "show", "promotion-1")
    assert f"fine-tune run {run.id}: {gate_steps} steps in " in shown  # type: ignore[union-attr]
    assert f"on cpu × 1, {run.tokens} tokens" in shown  # type: ignore[union-attr]
    assert "0 missing, 0 corrupt" in _graft("registry", "verify")
    assert "removed 0 orphan blob(s)" in _graft("registry", "gc", "--grace-hours", "0")


def test_a_lora_track_runs_algorithm_1_on_full_candidates(data_dir: Path, testbed: Testbed, tmp_path: Path) -> None:
    """With a LoRA + gradient-checkpointing recipe each candidate is a full model, so Δ^iter is a full diff that
    the next release carries: the same chain of diffs and candidates as a full fine-tune's."""
    lora = {"peft": {"r": 4, "alpha": 8}, "gradient_checkpointing": True, "learning_rate": 1e-2}
    track = write_track(tmp_path, testbed, name="lora", releases=(2, 3), steps=10, recipe=lora)
    _graft("track", "add", str(track))
    watched = _graft("track", "watch", "lora")
    assert "track lora: 2 new release(s), 2 run" in watched
    with session_scope(Workspace.from_settings().registry().engine) as session:
        candidates = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        diffs = list(session.scalars(select(Diff).order_by(Diff.id)))
        assert [c.mode for c in candidates] == ["none", "iterative"]
        assert [d.parent_id for d in diffs] == [None, diffs[0].id]
        assert candidates[1].source_diff_id == diffs[0].id
        assert [c.finetune_run.recipe["peft"]["r"] for c in candidates] == [4, 4]  # type: ignore[union-attr]
        assert all(d.raw_bytes > 0.5 * sum(p.stat().st_size for p in testbed.releases[1].glob("*.safetensors"))
                   for d in diffs)  # fmt: skip


def test_an_unknown_recycle_mode_is_refused_before_the_run_starts(data_dir: Path) -> None:
    with pytest.raises(ParameterTypeError, match=r"mode.*Input should be 'iterative', 'source', 'none' or 'auto'"):
        recycle.recycle_then_finetune(track="bed", release_id=1, mode="iterativ")  # type: ignore[arg-type]


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
    monkeypatch.setattr(gating, "decide", crash)
    heard: list[tuple[str, int, int]] = []
    with listening(lambda *told: heard.append(told)):
        crashed = watch_releases(track="resume", dispatch="inline")
    assert crashed.failed is not None and crashed.failed.endswith("'s run failed: RuntimeError: the machine went away")
    # The steps told a terminal of their progress: every fine-tuning step, and each evaluation to its end.
    assert [done for what, done, _ in heard if what == "01-M3: fine-tune"] == [*range(1, 31), 30]
    for subject in ("candidate", "base"):
        evaluation = [(done, total) for what, done, total in heard if what == f"01-M3: evaluate {subject}"]
        assert evaluation[-1] == (40, 40) and len(evaluation) > 2, evaluation
    monkeypatch.setattr(gating, "decide", decide)
    with session_scope(Workspace.from_settings().registry().engine) as session:
        [release] = rows.list_artifacts(session, kind="release")
        assert rows.list_artifacts(session, kind="promotion") == []
    decision = recycle.recycle_then_finetune(track="resume", release_id=release.id)
    assert len(trainings) == 1  # the fine-tune of the crashed run was not redone
    with session_scope(Workspace.from_settings().registry().engine) as session:
        assert len(rows.list_artifacts(session, kind="candidate")) == 1
        assert len(rows.list_artifacts(session, kind="diff")) == 1
        [promotion] = rows.list_artifacts(session, kind="promotion")
        assert promotion.reasons == list(decision.reasons)
