"""How to fine-tune: the recipe a track declares, validated here, and its LoRA option."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Lora(BaseModel):
    """A LoRA adapter (the peft library's) trained instead of the full weights, merged into the start model
    before the candidate is written: the candidate is a full model folder and its Δ a full diff."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="The adapter's rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA's scale numerator: the update is (alpha / r)·B·A.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: tuple[str, ...] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt (e.g. [q_proj, v_proj]), or every linear layer."
    )


class Recipe(BaseModel):
    """How to fine-tune. Frozen: a recipe is part of a track's identity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    steps: int = Field(100, ge=0, description="Optimizer steps; 0 writes the model unchanged.")
    learning_rate: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    seq_len: int = Field(64, ge=2, description="Tokens per example; longer examples are cut from the right.")
    completion_only: bool = Field(True, description="Put the loss on the completion only, not the prompt.")
    chat_template: bool = Field(False, description="Format each pair with the tokenizer's chat template.")
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Compute dtype (autocast). Weights train as fp32 masters, so that small updates are not "
        "rounded away; a LoRA recipe in bf16 keeps its frozen base in bf16 (2 bytes per weight) and its adapter "
        "in fp32. FSDP and ZeRO-3 shard the fp32 masters.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    peft: Lora | None = Field(None, description="Train a LoRA adapter instead of every weight.")
    deterministic: bool = Field(True, description="Deterministic kernels (torch.use_deterministic_algorithms).")
