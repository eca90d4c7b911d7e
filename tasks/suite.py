"""What to evaluate and how: a `Suite` (lm-eval task names, local task folders, prompts, backend and batch size),
read from a track or a suite YAML file. Nothing here runs an evaluation (`tasks.evaluate` does), so a command that
only reads a track's config does not load the evaluation stack."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SuiteError
from .eval_backends import BACKENDS
from .results import Backend, Dtype

AUTO_BATCH = re.compile(r"^auto(:[1-9][0-9]*)?$")


class Suite(BaseModel):
    """What to evaluate (lm-eval task names, where local task YAMLs live), with which prompts, and how to run
    it on the machine that evaluates."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field("suite", description="A label for reports.")
    tasks: tuple[str, ...] = Field(min_length=1, description="lm-eval task or group names.")
    task_dirs: tuple[Path, ...] = Field((), description="Local folders of task YAMLs, indexed before anything else.")
    builtin: bool = Field(False, description="Also index lm-eval's built-in tasks (slow to start: ~14,000 tasks).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples; None keeps each task's default.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N documents of each task.")
    apply_chat_template: bool = Field(False, description="Format prompts with the tokenizer's chat template.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="Where the HF backend runs: auto (cuda where the machine has a CUDA device, else cpu), cpu, "
        "cuda or cuda:N. The vllm backend runs on CUDA only (auto or cuda).",
    )
    batch_size: int | str = Field(
        64,
        description="Documents per forward pass, or auto: the HF backend finds the largest that fits (64 at most) "
        "and auto:N looks again N times as the documents get shorter; vLLM schedules every request itself.",
    )
    backend: Backend = Field(Backend.HF, description="hf (transformers) or vllm (the `vllm` extra; GPU workers).")
    dtype: Dtype = Field("auto", description="The weights' dtype once loaded; auto keeps the folder's.")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if isinstance(value, str) and AUTO_BATCH.match(value):
            return value
        raise ValueError(f"{value!r} is no batch size: write a whole number of at least 1, auto, or auto:N")

    @model_validator(mode="after")
    def _cuda_only_backends_run_on_cuda(self) -> Suite:
        if BACKENDS[self.backend].cuda_only and self.device not in ("auto", "cuda"):
            raise ValueError(
                f"the {self.backend} backend runs on the GPUs CUDA_VISIBLE_DEVICES names, not on device {self.device}; "
                "set device: cuda (or auto)"
            )
        return self


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
