"""The model a fine-tune trains, and the candidate folder it writes.

Whatever trained (every weight, or a LoRA adapter; in one process, DDP, FSDP or ZeRO-3; in fp32 or bf16),
the candidate is a full model folder in the start model's dtype, so that Δ = candidate − base has the base's
dtype and every downstream step (diff, registry, transfer) sees the same kind of folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import parse_flag_from_env

from ...errors import ModelFolderError
from ..io.stfile import read_header
from ..io.torchbits import FLOAT_DTYPES
from .recipe import Lora, Recipe

ADAPTER_CONFIG = "adapter_config.json"
"""What peft writes beside the adapter's weights; the mark of a staged LoRA run."""
TRAINER_ONLY = frozenset({"training_args.bin", "README.md"})
"""Files the trainer (or peft's model card) stages that a candidate does not hold."""


def folder_dtype(model_dir: Path) -> torch.dtype:
    """The dtype a model folder's config declares (float32 when it declares none).

    Raises:
        ModelFolderError: the config names no torch dtype.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelFolderError(f"{model_dir}/config.json declares dtype {name!r}, which torch has not.", path=model_dir)
    return dtype


def sharded() -> bool:
    """Whether this process is one of an FSDP or DeepSpeed launch (accelerate says so in the environment)."""
    return parse_flag_from_env("ACCELERATE_USE_FSDP") or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")


def load_dtype(*, recipe: Recipe) -> torch.dtype:
    """The dtype the weights are loaded in: bf16 for the frozen base of a bf16 LoRA recipe in one process or
    under DDP (its adapter trains in fp32), float32 otherwise. A full fine-tune keeps fp32 master weights and
    computes in the recipe's precision: in a bf16 AdamW, an update smaller than half a bf16 step of its weight
    is rounded away, which at fine-tuning learning rates is most of them."""
    return torch.bfloat16 if recipe.precision == "bf16" and recipe.peft is not None and not sharded() else torch.float32


def with_adapter(model: Any, *, lora: Lora) -> Any:
    """`model` with a trainable LoRA adapter (peft), every other weight frozen; the adapter is kept in fp32."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; its scale alpha / r takes a float
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def plain_model(model: Any) -> Any:
    """The transformers model itself: a LoRA run's PeftModel's base model, any other model as it is."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def saved_dtypes(folder: Path) -> set[torch.dtype]:
    """The dtypes of the floating-point tensors in a folder's safetensors files (read from their headers)."""
    return {
        FLOAT_DTYPES[info.dtype]
        for path in Path(folder).glob("*.safetensors")
        for info in read_header(path)[0]
        if info.dtype in FLOAT_DTYPES
    }


def write_candidate(*, staged: Path, start: Path, dtype: torch.dtype, out: Path) -> None:
    """Write the candidate of a fine-tune into the (empty, existing) folder `out`.

    `staged` is what the trainer saved: a full model, or a LoRA adapter (then merged into `start`'s weights).
    The candidate's weights are `dtype`, however they trained; a staged model already in `dtype` is moved,
    not rewritten.

    Raises:
        ModelFolderError: `staged` holds no weights, or `staged` or `start` cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    if (staged / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(start), dtype=dtype)
        model = PeftModel.from_pretrained(base, str(staged)).merge_and_unload()
    elif not any(staged.glob("*.safetensors")):
        raise ModelFolderError(
            f"the fine-tune saved no safetensors weights in {staged} (a DeepSpeed ZeRO-3 config without "
            "zero3_save_16bit_model saves only its own checkpoint); use deployments/accelerate/deepspeed_zero3.yaml "
            "or set zero3_save_16bit_model: true.",
            path=staged,
        )
    elif saved_dtypes(staged) <= {dtype}:
        for f in staged.iterdir():
            if f.name not in TRAINER_ONLY:
                shutil.move(str(f), out / f.name)
        return
    else:
        model = AutoModelForCausalLM.from_pretrained(str(staged), dtype=dtype)
    model.save_pretrained(str(out))
