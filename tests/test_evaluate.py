"""Evaluation through lm-eval: plain records whose values match a direct computation."""

from __future__ import annotations

import json
import math
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from graftwork.errors import EvalBackendError, GraftError, ModelFolderError, SuiteError
from graftwork.tasks.evaluate import EvalRecord, device_for, evaluate, records
from graftwork.tasks.results import Backend
from graftwork.tasks.suite import Suite, load_suite
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


PAPER_TASKS = (
    "gsm8k_cot_llama",
    "minerva_math",
    "arc_challenge",
    "gpqa_main_zeroshot",
    "mmlu",
    "ifeval",
    "global_mmlu_full_mg",
    "global_mmlu_full_si",
    "global_mmlu_full_tr",
)


def _leaf_configs(manager: Any, name: str) -> list[dict[str, Any]]:
    """The YAML configs (functions unresolved, datasets untouched) of every task under a task, group or tag."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index[name]
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return [entry.cfg]
    names = sorted(entry.tags) if entry.kind == Kind.TAG else entry.cfg["task"]
    return [cfg for sub in names for cfg in _leaf_configs(manager, sub)]


@pytest.mark.slow
def test_every_task_of_the_paper_suite_loads_through_lm_evals_task_manager() -> None:
    """GSM8K, MATH, ARC-C, GPQA, MMLU, IFEval and Global MMLU for Malagasy, Sinhala and Turkish, as lm-eval's
    own index of its built-in tasks finds them (~8 s), with the data set each reads (nothing is downloaded)."""
    from lm_eval.tasks import TaskManager

    suite = load_suite(path=REPO / "deployments" / "suites" / "paper.yaml")
    assert (suite.name, suite.tasks, suite.builtin, suite.task_dirs) == ("paper", PAPER_TASKS, True, ())
    manager = TaskManager(include_defaults=True)
    datasets = {}
    for name in suite.tasks:
        leaves = _leaf_configs(manager, name)
        assert all(cfg["output_type"] in ("generate_until", "multiple_choice") for cfg in leaves), name
        datasets[name] = (len(leaves), {(cfg["dataset_path"], cfg.get("dataset_name")) for cfg in leaves})
    assert datasets["gsm8k_cot_llama"] == (1, {("openai/gsm8k", "main")})
    assert datasets["minerva_math"][0] == 7 and {p for p, _ in datasets["minerva_math"][1]} == {
        "EleutherAI/hendrycks_math"
    }
    assert datasets["arc_challenge"] == (1, {("allenai/ai2_arc", "ARC-Challenge")})
    assert datasets["gpqa_main_zeroshot"] == (1, {("Idavidrein/gpqa", "gpqa_main")})
    assert datasets["mmlu"][0] == 57 and {p for p, _ in datasets["mmlu"][1]} == {"cais/mmlu"}
    assert datasets["ifeval"] == (1, {("google/IFEval", None)})
    for language in ("mg", "si", "tr"):  # Malagasy, Sinhala, Turkish
        assert datasets[f"global_mmlu_full_{language}"] == (57, {("CohereForAI/Global-MMLU", language)})


def test_the_extras_declare_what_the_paper_tasks_import() -> None:
    """IFEval's checks import langdetect, immutabledict and nltk, MATH's answer checking sympy and
    math-verify (with antlr4): the `eval-extras` extra brings them through lm-eval's own extras; the
    `vllm` extra brings lm-eval's vLLM model and vLLM."""
    import tomllib
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (lm_eval,) = [Requirement(r) for r in extras["eval-extras"]]
    assert (lm_eval.name, lm_eval.extras, str(lm_eval.specifier)) == ("lm-eval", {"ifeval", "math"}, "==0.4.13")
    brought: dict[str, set[str]] = {"ifeval": set(), "math": set()}
    for line in requires("lm_eval") or []:
        req = Requirement(line)
        for extra in brought:
            if req.marker is not None and req.marker.evaluate({"extra": extra}):
                brought[extra].add(req.name)
    assert brought == {
        "ifeval": {"langdetect", "immutabledict", "nltk"},
        "math": {"sympy", "antlr4-python3-runtime", "math_verify"},
    }
    assert {Requirement(r).name for r in extras["vllm"]} == {"lm-eval", "vllm"}


def test_run_settings_are_validated() -> None:
    suite = Suite(tasks=("x",))
    assert (suite.device, suite.batch_size, suite.backend, suite.dtype) == ("auto", 64, "hf", "auto")
    assert Suite(tasks=("x",), batch_size="auto:4").batch_size == "auto:4"
    for bad, message in [
        ({"batch_size": 0}, "0 is no batch size: write a whole number of at least 1, auto, or auto:N"),
        ({"batch_size": "auto:0"}, "'auto:0' is no batch size"),
        ({"device": "gpu"}, "String should match pattern '^(auto|cpu|cuda(:[0-9]+)?)$'"),
        ({"backend": "tgi"}, "Input should be 'hf' or 'vllm'"),
        ({"dtype": "int8"}, "Input should be 'auto', 'bfloat16', 'float16' or 'float32'"),
        (
            {"backend": "vllm", "device": "cuda:1"},
            "the vllm backend runs on the GPUs CUDA_VISIBLE_DEVICES names, not on device cuda:1; "
            "set device: cuda (or auto)",
        ),
    ]:
        with pytest.raises(ValidationError) as info:
            Suite(tasks=("x",), **bad)
        assert message in str(info.value), bad


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_cuda_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    assert device_for(Suite(tasks=("x",))) == "cpu"
    _gpus(monkeypatch, 2)
    assert device_for(Suite(tasks=("x",))) == "cuda"
    assert device_for(Suite(tasks=("x",), device="cuda:1")) == "cuda:1"
    assert device_for(Suite(tasks=("x",), device="cpu")) == "cpu"


def test_a_device_this_machine_lacks_is_a_clear_error(testbed: Testbed, monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    suite = Suite(name="paper", tasks=(testbed.generate_task,), task_dirs=(testbed.task_dir,), device="cuda")
    with pytest.raises(EvalBackendError) as info:
        evaluate(model_dir=testbed.releases[0], suite=suite)
    assert str(info.value) == (
        "suite 'paper' needs a CUDA device (device: cuda, backend: hf), but this machine has none; "
        "run it on a GPU worker, or set device: auto or cpu with backend: hf."
    )
    assert (info.value.suite, isinstance(info.value, GraftError | RuntimeError)) == ("paper", True)
    _gpus(monkeypatch, 1)
    with pytest.raises(EvalBackendError) as info:
        evaluate(model_dir=testbed.releases[0], suite=suite.model_copy(update={"device": "cuda:1"}))
    assert str(info.value) == (
        "suite 'paper' asks for device cuda:1, but this machine has 1 CUDA device (cuda:0); set device: cuda or auto."
    )


def test_vllm_not_installed_is_a_clear_error(testbed: Testbed) -> None:
    assert find_spec("vllm") is None, "this test checks the error of a machine without vLLM"
    suite = Suite(name="paper", tasks=(testbed.generate_task,), task_dirs=(testbed.task_dir,), backend="vllm")
    with pytest.raises(EvalBackendError) as info:
        evaluate(model_dir=testbed.releases[0], suite=suite)
    assert str(info.value) == (
        "suite 'paper' asks for the vllm backend, but vLLM is not installed here; install the `vllm` extra "
        "(pip install 'graftwork[vllm]') on this worker, or set backend: hf."
    )


def test_the_suites_run_settings_reach_lm_eval(testbed: Testbed, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `simple_evaluate` is asked for, for the HF backend on a CUDA machine and for vLLM (neither run here)."""
    import lm_eval

    from graftwork.tasks import evaluate as module

    calls: list[dict[str, Any]] = []

    def simple_evaluate(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"results": {}, "versions": {}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    monkeypatch.setattr(module, "find_spec", lambda name: object())
    _gpus(monkeypatch, 1)
    model = testbed.releases[0]
    base = Suite(tasks=(testbed.generate_task,), task_dirs=(testbed.task_dir,), limit=5, num_fewshot=2)
    evaluate(model_dir=model, suite=base.model_copy(update={"batch_size": "auto", "dtype": "bfloat16"}))
    evaluate(model_dir=model, suite=base.model_copy(update={"backend": Backend.VLLM, "apply_chat_template": True}))
    got = [
        {k: call[k] for k in ("model", "model_args", "batch_size", "limit", "num_fewshot", "apply_chat_template")}
        for call in calls
    ]
    assert got == [
        {
            "model": "hf",
            "model_args": {"pretrained": str(model), "dtype": "bfloat16", "device": "cuda"},
            "batch_size": "auto",
            "limit": 5,
            "num_fewshot": 2,
            "apply_chat_template": False,
        },
        {
            "model": "vllm",
            "model_args": {"pretrained": str(model), "dtype": "auto", "tensor_parallel_size": 1},
            "batch_size": 64,
            "limit": 5,
            "num_fewshot": 2,
            "apply_chat_template": True,
        },
    ]
