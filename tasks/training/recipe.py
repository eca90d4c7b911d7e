"""How to fine-tune: the recipe a track declares, validated here, its LoRA option, and its stages (SFT, then
preference tuning with DPO, each on its own data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...fs import file_sha256


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


DPO_BETA = 0.1
"""A dpo stage's beta when it sets none: TRL's default."""


class Stage(BaseModel):
    """One step of a staged fine-tune: supervised fine-tuning (`sft`) or Direct Preference Optimization (`dpo`,
    TRL's `DPOTrainer`), on its own data, with the recipe's hyper-parameters except those it sets."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["sft", "dpo"]
    data: Path | None = Field(
        default=None,
        description="The stage's JSONL: sft, prompt/completion pairs or messages (default: the track's "
        "finetune.data); dpo, preference pairs (prompt/chosen/rejected, or chosen/rejected conversations).",
    )
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps of this stage (default: the recipe's).")
    learning_rate: float | None = Field(default=None, gt=0, description="Default: the recipe's.")
    warmup_steps: int | None = Field(default=None, ge=0, description="Default: the recipe's.")
    batch_size: int | None = Field(
        default=None, ge=1, description="Default: the recipe's (dpo: pairs per micro-batch)."
    )
    beta: float | None = Field(
        default=None,
        gt=0,
        description="dpo only: how far from the reference model the policy may move (TRL's default 0.1).",
    )

    @model_validator(mode="after")
    def _fits_its_kind(self) -> Stage:
        if self.kind == "dpo" and self.data is None:
            raise ValueError("a dpo stage needs its own data: preference pairs (prompt/chosen/rejected) per line")
        if self.kind == "sft" and self.beta is not None:
            raise ValueError("beta is DPO's; drop it from the sft stage")
        return self

    @property
    def dpo_beta(self) -> float:
        """The beta a dpo stage trains with: its own, or TRL's default (`DPO_BETA`)."""
        return self.beta or DPO_BETA

    def resolved(self, base: Path) -> Stage:
        """The stage with a relative `data` taken from the folder `base` (a track file's)."""
        return self if self.data is None else self.model_copy(update={"data": base / self.data.expanduser()})


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
    stages: tuple[Stage, ...] = Field(
        (),
        description="Train in these steps, in order, each starting from the one before's model (empty: one sft "
        "stage on the track's data). A LoRA recipe trains a new adapter in each stage and merges it before the next, "
        "so a dpo stage's reference model is its start, the adapter switched off.",
    )

    def for_stage(self, stage: Stage) -> Recipe:
        """The recipe one stage trains with: this one's fields, overridden by those the stage sets."""
        fields = ("steps", "learning_rate", "warmup_steps", "batch_size")
        overrides = {f: getattr(stage, f) for f in fields if getattr(stage, f) is not None}
        return self.model_copy(update={**overrides, "stages": ()})

    @property
    def total_steps(self) -> int:
        """Optimizer steps of every stage together."""
        return sum(self.for_stage(stage).steps for stage in self.staged())

    def recorded(self) -> dict[str, Any]:
        """The recipe as a fine-tune run records it: its fields as JSON, each stage that names its data with the
        sha256 of that file as it is now (`data_sha256`; none when the file has gone since the run read it).

        Raises:
            OSError: a stage's data exists but cannot be read.
        """
        fields = self.model_dump(mode="json")
        fields["stages"] = [
            {**given, **({"data_sha256": file_sha256(stage.data)} if stage.data and stage.data.is_file() else {})}
            for stage, given in zip(self.stages, fields["stages"], strict=True)
        ]
        return fields

    def staged(self) -> tuple[Stage, ...]:
        """The stages to run: `stages`, or the one sft stage of a recipe with none."""
        return self.stages or (Stage(kind="sft"),)
