"""Evaluation: a model folder and a suite in, plain records out, through `lm_eval.simple_evaluate`.

A suite names lm-eval tasks and, optionally, local task folders (YAML + data). The task index is built
from the local folders only unless the suite asks for lm-eval's built-in tasks, so a local suite starts
in a fraction of a second and never touches the network.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ModelFolderError, SuiteError

OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
Backend = Literal["hf", "vllm"]


class Suite(BaseModel):
    """What to evaluate: lm-eval task names, where local task YAMLs live, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field("suite", description="A label for reports.")
    tasks: tuple[str, ...] = Field(min_length=1, description="lm-eval task or group names.")
    task_dirs: tuple[Path, ...] = Field((), description="Local folders of task YAMLs, indexed before anything else.")
    builtin: bool = Field(False, description="Also index lm-eval's built-in tasks (slow to start: ~14,000 tasks).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples; None keeps each task's default.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N documents of each task.")
    apply_chat_template: bool = Field(False, description="Format prompts with the tokenizer's chat template.")


class EvalRecord(BaseModel):
    """One metric of one task, as lm-eval reported it."""

    model_config = ConfigDict(frozen=True)

    task: str
    metric: str
    filter: str
    value: float
    stderr: float | None = Field(description="None where lm-eval reported 'N/A' (e.g. a single document).")
    n: int | None = Field(description="Documents evaluated; None for a group's aggregate.")
    lm_eval_version: str
    task_version: str | None


def load_suite(*, path: Path) -> Suite:
    """Read a suite YAML file; relative `task_dirs` are resolved against the file's folder.

    Raises:
        SuiteError: the file is missing, is not YAML, or does not describe a suite.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        suite = Suite.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SuiteError(
            f"suite file {path} cannot be used: {exc}. Fix the file and try again.", suite=str(path)
        ) from exc
    return suite.model_copy(update={"task_dirs": tuple(path.parent / d for d in suite.task_dirs)})


def evaluate(
    *,
    model_dir: Path,
    suite: Suite,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str = "auto",
    backend: Backend = "hf",
    progress: Callable[[int, int], None] | None = None,
) -> list[EvalRecord]:
    """Evaluate the model folder `model_dir` on `suite`.

    Args:
        model_dir: a local Hugging Face model folder (with its tokenizer).
        suite: the tasks to run.
        batch_size: documents per forward pass.
        device: torch device for the HF backend (`cpu`, `cuda`, `cuda:1`).
        dtype: weights' dtype when loaded (`auto`, `bfloat16`, `float32`).
        backend: `hf` (transformers) or `vllm` (GPU workers with vLLM installed).
        progress: called with (requests done, requests so far) as the HF backend works through them.

    Raises:
        SuiteError: a task of the suite is not found.
        ModelFolderError: `model_dir` is not a model folder.
    """
    if not (Path(model_dir) / "config.json").is_file():
        raise ModelFolderError(f"{model_dir} has no config.json; pass a Hugging Face model folder.", path=model_dir)
    args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": dtype}
    if backend == "hf":
        args["device"] = device
    if backend == "hf" and progress is not None:
        lm = _counting_hflm()(**args, batch_size=batch_size, progress=progress)
        return _run(lm, None, suite=suite, batch_size=batch_size)
    return _run(backend, args, suite=suite, batch_size=batch_size)


@functools.cache
def _counting_hflm() -> type:
    """lm-eval's HF model, counting the requests it answers through the methods lm-eval documents for
    subclasses (`_model_call`, `_model_generate`), for a progress bar."""
    from lm_eval.models.huggingface import HFLM

    class CountingHFLM(HFLM):
        def __init__(self, *, progress: Callable[[int, int], None], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._progress, self._done, self._total = progress, 0, 0

        def _begin(self, requests: int) -> None:
            self._total += requests
            self._progress(self._done, self._total)

        def _advance(self, rows: int) -> None:
            self._done = min(self._done + rows, self._total)
            self._progress(self._done, self._total)

        def _loglikelihood_tokens(self, requests: list[Any], *args: Any, **kwargs: Any) -> Any:
            self._begin(len(requests))
            return super()._loglikelihood_tokens(requests, *args, **kwargs)

        def generate_until(self, requests: list[Any], *args: Any, **kwargs: Any) -> Any:
            self._begin(len(requests))
            return super().generate_until(requests, *args, **kwargs)

        def _model_call(self, inps: Any, *args: Any, **kwargs: Any) -> Any:
            out = super()._model_call(inps, *args, **kwargs)
            self._advance(int(inps.shape[0]))
            return out

        def _model_generate(self, context: Any, *args: Any, **kwargs: Any) -> Any:
            out = super()._model_generate(context, *args, **kwargs)
            self._advance(int(context.shape[0]))
            return out

    return CountingHFLM


def evaluate_model(*, model: Any, tokenizer: Any, suite: Suite, batch_size: int = 64) -> list[EvalRecord]:
    """Evaluate an in-memory transformers model (used inside a training run, for learning curves).

    The model is put in eval mode for the evaluation and given back in the mode it was in.

    Raises:
        SuiteError: a task of the suite is not found.
    """
    from lm_eval.models.huggingface import HFLM

    training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    try:
        return _run(lm, None, suite=suite, batch_size=batch_size)
    finally:
        model.train(training)


def _run(model: Any, model_args: dict[str, Any] | None, *, suite: Suite, batch_size: int) -> list[EvalRecord]:
    for var in OFFLINE:
        os.environ.setdefault(var, "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(d) for d in suite.task_dirs] or None, include_defaults=suite.builtin)
    missing = [t for t in suite.tasks if t not in manager.all_tasks]
    if missing:
        where = ", ".join(str(d) for d in suite.task_dirs) or "no local folders"
        raise SuiteError(
            f"suite {suite.name!r}: lm-eval knows no task {', '.join(missing)} (searched {where}"
            f"{' and the built-in tasks' if suite.builtin else ''}); fix the name, add its folder to task_dirs, "
            "or set builtin: true.",
            suite=suite.name,
        )
    results = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(suite.tasks),
        num_fewshot=suite.num_fewshot,
        limit=suite.limit,
        batch_size=batch_size,
        task_manager=manager,
        apply_chat_template=suite.apply_chat_template,
        log_samples=False,
        torch_random_seed=None,
    )
    assert results is not None  # None only on non-zero ranks of a distributed run, which this is not
    return records(results)


def records(results: dict[str, Any]) -> list[EvalRecord]:
    """Flatten `simple_evaluate`'s result dict into one record per task, metric and filter."""
    harness = version("lm_eval")
    samples = results.get("n-samples", {})
    out = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            out.append(
                EvalRecord(
                    task=task,
                    metric=metric,
                    filter=filt,
                    value=float(value),
                    stderr=float(stderr) if isinstance(stderr, int | float) and not math.isnan(stderr) else None,
                    n=samples[task]["effective"] if task in samples else None,
                    lm_eval_version=harness,
                    task_version=None if results["versions"].get(task) is None else str(results["versions"][task]),
                )
            )
    return out
