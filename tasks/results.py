"""What an evaluation leaves: one record per task, metric and filter, each with the fingerprint of what decides
its numbers, and lm-eval's per-sample scores keyed by task, filter and document id, so that two evaluations
can be compared sample by sample when, and only when, they were made the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..fs import file_sha256


class Backend(StrEnum):
    """The lm-eval model backend an evaluation runs on."""

    HF = "hf"
    VLLM = "vllm"


Dtype = Literal["auto", "bfloat16", "float16", "float32"]
MODEL_FILES = ("*.safetensors", "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json")
SHOWN = 200  # characters of a sample's target and response that are kept


class RunSettings(BaseModel):
    """How a suite was run, as far as it decides the numbers."""

    model_config = ConfigDict(frozen=True)

    backend: Backend
    dtype: Dtype
    batch_size: int | str
    apply_chat_template: bool


class Fingerprint(BaseModel):
    """What decides an evaluation's numbers for one task. Two evaluations are comparable when their fingerprints
    agree in everything but `model_sha256` (their `setup_sha256` is equal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    harness: str = Field(description="lm-eval's version.")
    task: str
    task_version: str | None
    config_sha256: str = Field(description="The task's config as lm-eval ran it (its file's path left out).")
    data_sha256: str = Field(description="The documents evaluated and their targets, in order (lm-eval's hashes).")
    backend: Backend
    dtype: Dtype
    batch_size: str
    apply_chat_template: bool
    num_fewshot: int | None
    seeds: dict[str, int | None]
    model_sha256: str | None = Field(description="The model folder's weights, config and tokenizer; None in memory.")

    @property
    def setup_sha256(self) -> str:
        """The hash of everything but the model."""
        return _sha256(self.model_dump(exclude={"model_sha256"}))

    def differences(self, other: Fingerprint) -> list[str]:
        """The fields, the model's hash aside, in which `other` differs: `batch_size 64 ≠ 32`."""
        mine, theirs = self.model_dump(exclude={"model_sha256"}), other.model_dump(exclude={"model_sha256"})
        return [f"{key} {mine[key]} ≠ {theirs[key]}" for key in mine if mine[key] != theirs[key]]


class EvalRecord(BaseModel):
    """One metric of one task, as lm-eval reported it, with the fingerprint of its evaluation."""

    model_config = ConfigDict(frozen=True)

    task: str
    metric: str
    filter: str
    value: float
    stderr: float | None = Field(description="None where lm-eval reported 'N/A' (e.g. a single document).")
    n: int | None = Field(description="Documents evaluated; None for a group's aggregate.")
    lm_eval_version: str
    task_version: str | None
    fingerprint: Fingerprint | None = Field(default=None, description="None for an in-memory model's evaluation.")


class SampleScore(BaseModel):
    """One document's scores on one task and filter, as lm-eval logged them."""

    model_config = ConfigDict(frozen=True)

    task: str
    filter: str
    doc_id: int
    doc_hash: str
    target: str
    response: str
    scores: dict[str, float]

    @property
    def key(self) -> tuple[str, str, int]:
        """What aligns two evaluations' samples: task, filter and document id."""
        return self.task, self.filter, self.doc_id


class Evaluation(BaseModel):
    """An evaluation's records, its per-sample scores, and the subtasks of each group it scored."""

    model_config = ConfigDict(frozen=True)

    records: list[EvalRecord]
    samples: list[SampleScore]
    groups: dict[str, list[str]] = Field(default_factory=dict)

    def scores_of(self, *, task: str, metric: str, filter: str) -> dict[Hashable, float]:
        """Per-sample values of one metric of a task, or of every subtask of a group, keyed by `SampleScore.key`."""
        tasks = set(_leaves(task, self.groups))
        return {
            s.key: s.scores[metric]
            for s in self.samples
            if s.task in tasks and s.filter == filter and metric in s.scores
        }


def model_sha256(folder: Path) -> str:
    """The content hash of a model folder: its weights, config and tokenizer files, by name.

    Raises:
        OSError: a file cannot be read.
    """
    files = sorted({p for pattern in MODEL_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    return _sha256({p.name: file_sha256(p) for p in files})


def evaluation_of(results: dict[str, Any], *, run: RunSettings, model_sha256: str) -> Evaluation:
    """An evaluation as `simple_evaluate(..., log_samples=True)` reported it, run as `run` says."""
    groups = {group: list(subtasks) for group, subtasks in results.get("group_subtasks", {}).items() if subtasks}
    samples = [_sample(task, raw) for task, logged in results.get("samples", {}).items() for raw in logged]
    prints = {
        task: _fingerprint(task, results, run=run, model_sha256=model_sha256) for task in results.get("samples", {})
    }
    for group in groups:
        parts = [prints[t] for t in _leaves(group, groups) if t in prints]
        if parts:
            prints[group] = _group_fingerprint(group, parts)
    return Evaluation(
        records=[r.model_copy(update={"fingerprint": prints.get(r.task)}) for r in records(results)],
        samples=samples,
        groups=groups,
    )


def _sample(task: str, raw: dict[str, Any]) -> SampleScore:
    scores = {metric: float(raw[metric]) for metric in raw.get("metrics", ()) if hasattr(raw.get(metric), "__float__")}
    responses = raw.get("filtered_resps") or [""]
    if all(isinstance(r, str) for r in responses):
        response = responses[0]
    else:  # loglikelihood requests: the index of the most likely choice
        response = str(max(range(len(responses)), key=lambda i: responses[i][0]))
    return SampleScore(
        task=task,
        filter=raw.get("filter", "none"),
        doc_id=int(raw["doc_id"]),
        doc_hash=raw.get("doc_hash", ""),
        target=str(raw.get("target", ""))[:SHOWN],
        response=str(response)[:SHOWN],
        scores=scores,
    )


def _fingerprint(task: str, results: dict[str, Any], *, run: RunSettings, model_sha256: str) -> Fingerprint:
    config = dict(results["configs"].get(task, {}))
    config["metadata"] = {k: v for k, v in (config.get("metadata") or {}).items() if k != "config_source"}
    documents = [(s["doc_id"], s.get("doc_hash"), s.get("target_hash")) for s in results["samples"][task]]
    seeds = results.get("config", {})
    version_ = results["versions"].get(task)
    return Fingerprint(
        harness=version("lm_eval"),
        task=task,
        task_version=None if version_ is None else str(version_),
        config_sha256=_sha256(config),
        data_sha256=_sha256(sorted(documents, key=str)),
        backend=run.backend,
        dtype=run.dtype,
        batch_size=str(run.batch_size),
        apply_chat_template=run.apply_chat_template,
        num_fewshot=results.get("n-shot", {}).get(task),
        seeds={k: seeds.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")},
        model_sha256=model_sha256,
    )


def _group_fingerprint(group: str, parts: list[Fingerprint]) -> Fingerprint:
    """A group's fingerprint: its subtasks', combined."""
    first = parts[0]
    return first.model_copy(
        update={
            "task": group,
            "task_version": None,
            "config_sha256": _sha256([p.config_sha256 for p in parts]),
            "data_sha256": _sha256([p.data_sha256 for p in parts]),
            "num_fewshot": first.num_fewshot if all(p.num_fewshot == first.num_fewshot for p in parts) else None,
        }
    )


def _leaves(task: str, groups: dict[str, list[str]]) -> list[str]:
    """A task, or the tasks under a group, however deep."""
    if task not in groups:
        return [task]
    return [leaf for sub in groups[task] for leaf in _leaves(sub, groups)]


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


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
