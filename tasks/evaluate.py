"""Evaluation: a model folder and a suite in, plain records out, through `lm_eval.simple_evaluate`.

A suite names lm-eval tasks and, optionally, local task folders (YAML + data), and how to run them: on
which device, in which batch size and dtype, through transformers (`hf`) or vLLM. The task index is built
from the local folders only unless the suite asks for lm-eval's built-in tasks, so a local suite starts
in a fraction of a second and never touches the network.

Every evaluation of a model folder also keeps lm-eval's per-sample scores (`log_samples`) and fingerprints
its records (`tasks.results`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from ..errors import EvalBackendError, ModelFolderError, SuiteError
from .eval_backends import BACKENDS
from .results import EvalRecord, Evaluation, RunSettings, evaluation_of, model_sha256, records
from .suite import Suite


def evaluate(*, model_dir: Path, suite: Suite, progress: Callable[[int, int], None] | None = None) -> list[EvalRecord]:
    """The records of `run_evaluation` (its arguments and errors), for callers that need no samples."""
    return run_evaluation(model_dir=model_dir, suite=suite, progress=progress).records


def run_evaluation(*, model_dir: Path, suite: Suite, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Evaluate the model folder `model_dir` on `suite`, run as the suite's device, batch size, backend and
    dtype say; keep every sample's scores and fingerprint every record.

    Args:
        model_dir: a local Hugging Face model folder (with its tokenizer).
        suite: the tasks to run, and how.
        progress: called with (requests done, requests so far) as the HF backend works through them.

    Raises:
        ModelFolderError: `model_dir` is not a model folder.
        EvalBackendError: the suite asks for vLLM and it is not installed, or for a CUDA device this
            machine does not have.
        SuiteError: a task of the suite is not found.
    """
    if not (Path(model_dir) / "config.json").is_file():
        raise ModelFolderError(f"{model_dir} has no config.json; pass a Hugging Face model folder.", path=model_dir)
    device = device_for(suite)
    backend = BACKENDS[suite.backend]
    if progress is None or not backend.counts_requests:
        results = _run(backend.model, backend.model_args(model_dir, suite.dtype, device), suite=suite, log_samples=True)
    else:
        model = _counting_hflm()(
            pretrained=str(model_dir), dtype=suite.dtype, device=device, batch_size=suite.batch_size, progress=progress
        )
        results = _run(model, None, suite=suite, log_samples=True)
    run = RunSettings.model_validate(
        suite.model_dump(include={"backend", "dtype", "batch_size", "apply_chat_template"})
    )
    return evaluation_of(results, run=run, model_sha256=model_sha256(Path(model_dir)))


def device_for(suite: Suite) -> str:
    """The device `suite` runs on here: its `device`, where `auto` is cuda on a machine with a CUDA device
    (and always for vLLM) and cpu on one without.

    Raises:
        EvalBackendError: the suite asks for vLLM and it is not installed, or for a CUDA device this
            machine does not have.
    """
    backend = BACKENDS[suite.backend]
    if backend.package is not None and find_spec(backend.package) is None:
        raise EvalBackendError(
            f"suite {suite.name!r} asks for the {suite.backend} backend, but {backend.title} is not installed "
            f"here; install the `{backend.extra}` extra (pip install 'graftwork[{backend.extra}]') on this worker, "
            "or set backend: hf.",
            suite=suite.name,
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = suite.device
    if device == "auto":
        device = "cuda" if gpus or backend.cuda_only else "cpu"
    if device == "cpu":
        return device
    if not gpus:
        raise EvalBackendError(
            f"suite {suite.name!r} needs a CUDA device (device: {suite.device}, backend: {suite.backend}), but "
            "this machine has none; run it on a GPU worker, or set device: auto or cpu with backend: hf.",
            suite=suite.name,
        )
    index = int(device.partition(":")[2] or 0)
    if index >= gpus:
        have = "1 CUDA device (cuda:0)" if gpus == 1 else f"{gpus} CUDA devices (cuda:0 to cuda:{gpus - 1})"
        raise EvalBackendError(
            f"suite {suite.name!r} asks for device {device}, but this machine has {have}; set device: cuda or auto.",
            suite=suite.name,
        )
    return device


@functools.cache
def _counting_hflm() -> type:
    """lm-eval's HF model, counting the requests it answers through the methods lm-eval documents for
    subclasses (`_model_call`, `_model_generate`), for a progress bar."""
    from lm_eval.models.huggingface import HFLM

    class CountingHFLM(HFLM):
        def __init__(self, *, progress: Callable[[int, int], None], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._progress, self._done, self._total, self._counting = progress, 0, 0, True

        def _begin(self, requests: int) -> None:
            self._total += requests
            self._progress(self._done, self._total)

        def _advance(self, rows: int) -> None:
            if self._counting:
                self._done = min(self._done + rows, self._total)
                self._progress(self._done, self._total)

        def _detect_batch_size(self, *args: Any, **kwargs: Any) -> Any:
            # batch_size auto probes with dummy batches through _model_call: they answer no request
            self._counting = False
            try:
                return super()._detect_batch_size(*args, **kwargs)
            finally:
                self._counting = True

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


def evaluate_model(*, model: Any, tokenizer: Any, suite: Suite) -> list[EvalRecord]:
    """Evaluate an in-memory transformers model (used inside a training run, for learning curves), in the
    suite's batch size, through the HF backend on the device and in the dtype the model is in already (the
    suite's device, backend and dtype are for model folders).

    The model is put in eval mode for the evaluation and given back in the mode it was in.

    Raises:
        SuiteError: a task of the suite is not found.
    """
    from lm_eval.models.huggingface import HFLM

    training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=suite.batch_size, device=str(model.device))
    try:
        return records(_run(lm, None, suite=suite, log_samples=False))
    finally:
        model.train(training)


def _run(model: Any, model_args: dict[str, Any] | None, *, suite: Suite, log_samples: bool) -> dict[str, Any]:
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
        batch_size=suite.batch_size,
        task_manager=manager,
        apply_chat_template=suite.apply_chat_template,
        log_samples=log_samples,
        torch_random_seed=None,
    )
    assert results is not None  # None only on non-zero ranks of a distributed run, which this is not
    return results
