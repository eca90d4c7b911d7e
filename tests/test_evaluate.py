"""Evaluation through lm-eval: plain records whose values match a direct computation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from graftwork.errors import GraftError, ModelFolderError, SuiteError
from graftwork.tasks.evaluate import EvalRecord, Suite, evaluate, load_suite, records
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.finetune import FinetuneResult

REPO = Path(__file__).resolve().parents[1]


def _eval_rows(testbed: Testbed) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (testbed.root / "data" / "eval.jsonl").read_text().splitlines()]


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)), AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def _greedy_accuracy(model_dir: Path, rows: list[dict[str, Any]]) -> float:
    """Exact match of greedy answers, computed with transformers alone."""
    tok, model = _load(model_dir)
    hits = 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([tok(row["prompt"], add_special_tokens=False)["input_ids"]])
            out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
            hits += tok.decode(out[0, ids.shape[1] :]).split("\n")[0] == row["answer"]
    return hits / len(rows)


def _choice_accuracy(model_dir: Path, rows: list[dict[str, Any]]) -> float:
    """Accuracy of picking the choice with the highest log-likelihood after the prompt."""
    tok, model = _load(model_dir)
    hits = 0
    with torch.no_grad():
        for row in rows:
            scores = []
            for choice in row["choices"]:
                ctx = tok(row["prompt"], add_special_tokens=False)["input_ids"]
                cont = tok(choice, add_special_tokens=False)["input_ids"]
                logp = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
                scores.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
            hits += scores.index(max(scores)) == row["label"]
    return hits / len(rows)


@pytest.mark.slow
def test_records_match_a_direct_computation(finetuned_m4: FinetuneResult, testbed: Testbed) -> None:
    suite = Suite(tasks=(testbed.generate_task, testbed.choice_task), task_dirs=(testbed.task_dir,), limit=60)
    got = {r.task: r for r in evaluate(model_dir=finetuned_m4.out_dir, suite=suite)}
    rows = _eval_rows(testbed)[:60]
    gen, mc = got[testbed.generate_task], got[testbed.choice_task]
    assert (gen.metric, gen.filter, gen.n, gen.task_version, gen.lm_eval_version) == (
        "exact_match",
        "none",
        60,
        "1.0",
        "0.4.13",
    )
    assert (mc.metric, mc.filter, mc.n) == ("acc", "none", 60)
    assert gen.value == pytest.approx(_greedy_accuracy(finetuned_m4.out_dir, rows), abs=1e-12)
    assert 0.3 < gen.value < 1.0
    assert mc.value == pytest.approx(_choice_accuracy(finetuned_m4.out_dir, rows), abs=1e-12)
    for r in (gen, mc):
        assert r.stderr == pytest.approx(math.sqrt(r.value * (1 - r.value) / (r.n - 1)))


def test_stderr_na_becomes_none_and_groups_have_no_n() -> None:
    raw = {
        "results": {
            "t": {"alias": "t", "acc,none": 1.0, "acc_stderr,none": "N/A", "exact_match,strict": 0.5},
            "g": {"alias": "g", "acc,none": 0.25, "acc_stderr,none": 0.1},
        },
        "n-samples": {"t": {"original": 3, "effective": 1}},
        "versions": {"t": 2, "g": None},
    }
    got = records(raw)
    assert [(r.task, r.metric, r.filter, r.value, r.stderr, r.n, r.task_version) for r in got] == [
        ("t", "acc", "none", 1.0, None, 1, "2"),
        ("t", "exact_match", "strict", 0.5, None, 1, "2"),
        ("g", "acc", "none", 0.25, 0.1, None, None),
    ]
    assert all(isinstance(r, EvalRecord) for r in got)


def test_unknown_tasks_and_folders_are_clear_errors(testbed: Testbed, tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="knows no task nope") as info:
        evaluate(model_dir=testbed.releases[0], suite=Suite(tasks=("nope",), task_dirs=(testbed.task_dir,)))
    assert isinstance(info.value, GraftError | ValueError)
    with pytest.raises(ModelFolderError, match=r"config\.json"):
        evaluate(model_dir=tmp_path, suite=Suite(tasks=("x",)))
    bad = tmp_path / "suite.yaml"
    bad.write_text("tasks: []\n")
    with pytest.raises(SuiteError, match=r"suite\.yaml"):
        load_suite(path=bad)


def test_the_production_suite_names_real_lm_eval_tasks() -> None:
    import lm_eval

    suite = load_suite(path=REPO / "deployments" / "suites" / "paper.yaml")
    assert suite.builtin and suite.task_dirs == ()
    declared = set()
    for path in Path(lm_eval.__file__).parent.joinpath("tasks").rglob("*.yaml"):
        declared |= set(re.findall(r"^(?:task|group): *(\S+)\s*$", path.read_text(errors="ignore"), re.M))
    assert set(suite.tasks) <= declared, set(suite.tasks) - declared
    assert {"gsm8k_cot_llama", "ifeval", "mmlu", "arc_challenge"} <= set(suite.tasks)
