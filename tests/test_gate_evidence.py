"""The gate on paired evidence: per-sample results and fingerprints from lm-eval on the test bed, the paired
rules against the champion, and comparisons refused (in words) across evaluations made differently."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from graftwork.operations.scores import store_evaluation, stored_evaluation
from graftwork.storage import open_registry
from graftwork.storage.models import EvalResult
from graftwork.tasks.evaluate import run_evaluation
from graftwork.tasks.evidence import compare, pairs, table
from graftwork.tasks.gate import GateRules, MetricRef, decide
from graftwork.tasks.results import EvalRecord, Evaluation, Fingerprint, SampleScore
from graftwork.tasks.suite import Suite
from graftwork.tasks.testbed import Testbed
from graftwork.terms import EvalSubject
from tests.unpaired import unpaired_z

TASK = "testbed_add"
REF = MetricRef(task=TASK, metric="exact_match")
N = 400


def _fingerprint(**changes: object) -> Fingerprint:
    fields: dict[str, object] = {
        "harness": "0.4.13", "task": TASK, "task_version": "1.0", "config_sha256": "c" * 64, "data_sha256": "d" * 64,
        "backend": "hf", "dtype": "auto", "batch_size": "64", "apply_chat_template": False, "num_fewshot": 0,
        "seeds": {"random_seed": 0}, "model_sha256": "m" * 64,
    }  # fmt: skip
    return Fingerprint.model_validate({**fields, **changes})


def _evaluation(right: list[int], *, model: str, **changes: object) -> Evaluation:
    """An evaluation of N documents, right where `right` says 1, with lm-eval's binomial stderr."""
    p = sum(right) / len(right)
    record = EvalRecord(
        task=TASK, metric="exact_match", filter="none", value=p, stderr=math.sqrt(p * (1 - p) / (len(right) - 1)),
        n=len(right), lm_eval_version="0.4.13", task_version="1.0",
        fingerprint=_fingerprint(model_sha256=model * 64, **changes),
    )  # fmt: skip
    samples = [
        SampleScore(task=TASK, filter="none", doc_id=i, doc_hash=f"{i}", target=f"{i}", response=f"{i}" if r else "x",
                    scores={"exact_match": float(r)})
        for i, r in enumerate(right)
    ]  # fmt: skip
    return Evaluation(records=[record], samples=samples)


def _pair(*, wins: int, losses: int) -> tuple[Evaluation, Evaluation]:
    """A candidate and a champion that agree on all but `wins` + `losses` of N documents (80 % right both)."""
    champion = [1] * 320 + [0] * 80
    candidate = list(champion)
    for i in range(wins):
        candidate[320 + i] = 1
    for i in range(losses):
        candidate[i] = 0
    return _evaluation(candidate, model="a"), _evaluation(champion, model="b")


def test_the_paired_rule_tells_apart_what_the_stderr_rule_cannot() -> None:
    candidate, champion = _pair(wins=16, losses=2)
    (mine,), (theirs,) = candidate.records, champion.records
    assert mine.value - theirs.value == pytest.approx(0.035)
    assert (
        unpaired_z(a_mean=mine.value, a_stderr=mine.stderr or 0, b_mean=theirs.value, b_stderr=theirs.stderr or 0)
        > 0.05
    )
    rules = GateRules(metrics=(REF,), beat_base_by=None, superior={"confidence": 0.95})
    decision = decide(rules=rules, candidate=candidate.records, champion=champion.records,
                      pairs=pairs(candidate, champion, refs=rules.metrics))  # fmt: skip
    assert decision.promote, decision.reasons
    (superior,) = [r for r in decision.reasons if "superior" in r]
    assert superior.startswith("pass: superior: testbed_add/exact_match: candidate − champion = +0.0350, 95% CI [")
    assert "paired bootstrap, 10000 resamples, seed 0, n=400; McNemar p = 0.001312" in superior


def test_a_regression_the_stderr_rule_lets_through_is_caught_by_non_inferiority() -> None:
    candidate, champion = _pair(wins=2, losses=16)
    loose = GateRules(metrics=(REF,), beat_base_by=None, beat_champion_by=-1.0)
    assert decide(rules=loose, candidate=candidate.records, champion=champion.records).promote
    rules = GateRules.model_validate({**loose.model_dump(), "non_inferior": {"margin": 0.01, "confidence": 0.95}})
    decision = decide(rules=rules, candidate=candidate.records, champion=champion.records,
                      pairs=pairs(candidate, champion, refs=rules.metrics))  # fmt: skip
    assert not decision.promote
    (failed,) = [r for r in decision.reasons if r.startswith("fail:")]
    assert failed.startswith("fail: non_inferior: testbed_add/exact_match: candidate − champion = -0.0350")
    assert failed.endswith("≤ -0.0100")


def test_a_candidate_identical_to_the_champion_differs_by_zero_and_the_bootstrap_is_seeded() -> None:
    same, _ = _pair(wins=0, losses=0)
    twin = same.model_copy(update={"records": [same.records[0].model_copy(update={"fingerprint": _fingerprint()})]})
    rules = GateRules(metrics=(REF,), beat_base_by=None, non_inferior={}, superior={})
    found = pairs(same, twin, refs=rules.metrics)
    decision = decide(rules=rules, candidate=same.records, champion=twin.records, pairs=found)
    assert [r.split(":")[0] for r in decision.reasons[-2:]] == ["pass", "fail"]  # non-inferior, not superior
    (row,) = compare(same, twin)
    assert row.paired is not None and row.paired.diff == 0 and row.paired.low <= 0 <= row.paired.high
    assert row.paired.mcnemar_p == 1.0 and row.paired.disagree == 0
    one, other = _pair(wins=9, losses=5)
    assert compare(one, other, seed=7) == compare(one, other, seed=7)
    assert compare(one, other, seed=7)[0].paired != compare(one, other, seed=8)[0].paired


@pytest.mark.parametrize(
    ("changes", "said"),
    [({"batch_size": "32"}, "batch_size 64 ≠ 32"), ({"data_sha256": "e" * 64}, f"data_sha256 {'d' * 64} ≠ {'e' * 64}")],
)
def test_evaluations_made_differently_are_never_paired(changes: dict[str, object], said: str) -> None:
    candidate, _ = _pair(wins=16, losses=2)
    champion = _evaluation([1] * 320 + [0] * 80, model="b", **changes)
    found = pairs(candidate, champion, refs=(REF,))
    assert found[REF] == f"evaluated differently: {said}"
    rules = GateRules(metrics=(REF,), beat_base_by=None, non_inferior={})
    decision = decide(rules=rules, candidate=candidate.records, champion=champion.records, pairs=found)
    assert not decision.promote
    assert decision.reasons[-1] == f"fail: non_inferior: {REF}: no paired evidence (evaluated differently: {said})"
    assert f"not paired: evaluated differently: {said}" in table(compare(candidate, champion), a="A", b="B")


@pytest.fixture(scope="module")
def bed_suite(testbed: Testbed) -> Suite:
    return Suite(name="testbed", tasks=(testbed.generate_task,), task_dirs=(testbed.task_dir,), limit=60)


def test_the_test_bed_evaluation_keeps_every_sample_and_fingerprints_what_decides_it(
    testbed: Testbed, bed_suite: Suite, tmp_path: Path
) -> None:
    model = testbed.releases[3]
    first = run_evaluation(model_dir=model, suite=bed_suite)
    (record,) = first.records
    assert record.n == 60 and len(first.samples) == 60
    assert [s.doc_id for s in first.samples] == list(range(60))
    assert record.value == sum(s.scores["exact_match"] for s in first.samples) / 60
    again = run_evaluation(model_dir=model, suite=bed_suite)
    assert again.records[0].fingerprint == record.fingerprint  # deterministic, model hash included
    (row,) = compare(first, again)
    assert row.paired is not None and row.paired.diff == 0 and row.paired.disagree == 0
    batched = run_evaluation(model_dir=model, suite=bed_suite.model_copy(update={"batch_size": 7}))
    assert record.fingerprint is not None and batched.records[0].fingerprint is not None
    assert record.fingerprint.differences(batched.records[0].fingerprint) == ["batch_size 64 ≠ 7"]
    tasks = tmp_path / "tasks"
    shutil.copytree(testbed.task_dir, tasks)
    data = tmp_path / "data" / "eval.jsonl"  # the task's data file, found next to its folder
    data.parent.mkdir()
    lines = (testbed.task_dir.parent / "data" / "eval.jsonl").read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    moved = run_evaluation(model_dir=model, suite=bed_suite.model_copy(update={"task_dirs": (tasks,)}))
    assert record.fingerprint.differences(moved.records[0].fingerprint) == [  # type: ignore[arg-type]
        f"data_sha256 {record.fingerprint.data_sha256} ≠ {moved.records[0].fingerprint.data_sha256}"  # type: ignore[union-attr]
    ]
    other = run_evaluation(model_dir=testbed.releases[2], suite=bed_suite).records[0].fingerprint
    assert other is not None and other.setup_sha256 == record.fingerprint.setup_sha256
    assert other.model_sha256 != record.fingerprint.model_sha256


def test_samples_round_trip_through_the_blob_store(testbed: Testbed, bed_suite: Suite, tmp_path: Path) -> None:
    evaluation = run_evaluation(model_dir=testbed.releases[3], suite=bed_suite)
    registry = open_registry(database_url=f"sqlite:///{tmp_path / 'r.db'}", blob_url=str(tmp_path / "blobs"))
    scores = store_evaluation(registry, evaluation=evaluation)
    (score,) = scores
    assert score.samples_blob is not None and score.fingerprint is not None
    row = EvalResult(id=1, subject=EvalSubject.CANDIDATE, **vars(score))
    back = stored_evaluation(registry, rows=[row])
    assert back.samples == evaluation.samples and back.records == evaluation.records
