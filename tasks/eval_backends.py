"""lm-eval's model backends, by the name a suite gives (`Suite.backend`): what each needs installed, where it
runs, and the model arguments it takes. A new backend is one entry of `BACKENDS` (and its `Backend` name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import Backend


@dataclass(frozen=True)
class EvalBackend:
    """One lm-eval model backend."""

    model: str
    """The name lm-eval knows it by (`simple_evaluate(model=...)`)."""
    title: str
    """Its name in messages."""
    model_args: Callable[[Path, str, str], dict[str, Any]]
    """The model arguments for a model folder, the dtype it is loaded in and the device it runs on."""
    package: str | None = None
    """The module it needs installed, if any beyond lm-eval."""
    extra: str | None = None
    """Graftwork's pip extra that installs `package`."""
    cuda_only: bool = False
    """Whether it runs on CUDA devices only."""
    counts_requests: bool = False
    """Whether a progress bar can count the requests it answers (Graftwork's counting subclass of lm-eval's HFLM)."""


def _hf_args(model_dir: Path, dtype: str, device: str) -> dict[str, Any]:
    return {"pretrained": str(model_dir), "dtype": dtype, "device": device}


def _vllm_args(model_dir: Path, dtype: str, device: str) -> dict[str, Any]:
    return {"pretrained": str(model_dir), "dtype": dtype, "tensor_parallel_size": 1}


BACKENDS: dict[Backend, EvalBackend] = {
    Backend.HF: EvalBackend(model="hf", title="transformers", model_args=_hf_args, counts_requests=True),
    Backend.VLLM: EvalBackend(
        model="vllm", title="vLLM", model_args=_vllm_args, package="vllm", extra="vllm", cuda_only=True
    ),
}
