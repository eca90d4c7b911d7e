"""What every stage of a fine-tune gives transformers' `Trainer` (TRL's trainers are `Trainer`s): its arguments
from a recipe, the callback that keeps the loss and eval curves across stages, and the stage's output folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import TrainerCallback, TrainingArguments

from ...fs import atomic_output_dir
from ..evaluate import EvalRecord, evaluate_model
from ..io.layout import GENERATION_CONFIG
from ..suite import Suite
from .candidate import folder_dtype, load_dtype, plain_model, with_adapter, write_candidate
from .recipe import Recipe, Stage

Args = TypeVar("Args", bound=TrainingArguments)


def trainer_args(kind: type[Args], *, recipe: Recipe, scratch: Path, **extra: Any) -> Args:
    """The arguments of a stage's trainer (`TrainingArguments`, or a TRL config such as `DPOConfig`) for `recipe`:
    its steps and optimizer, its precision and determinism; no checkpoints, no reports, no progress bar (the
    curves are kept by `Curves`)."""
    return kind(
        output_dir=str(scratch),
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.schedule,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        optim="adamw_torch",
        seed=recipe.seed,
        data_seed=recipe.seed,
        full_determinism=recipe.deterministic,
        bf16=recipe.precision == "bf16",
        fp16=recipe.precision == "fp16",
        activation_checkpointing=recipe.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        **extra,
    )


@dataclass(frozen=True)
class StageRun:
    """One stage of a fine-tune: the model folder it starts from (`start`; `origin` is the fine-tune's first, whose
    tokenizer and generation config every output gets), its recipe, where it writes (`out`, replaced when
    `overwrite`) and its trainer's own files (`scratch`), and the curves it adds its steps to."""

    start: Path
    origin: Path
    tokenizer: Any
    recipe: Recipe
    stage: Stage
    out: Path
    overwrite: bool
    scratch: Path
    curves: Curves

    def load_model(self) -> Any:
        """The start model to train, in the recipe's load dtype, with a fresh LoRA adapter when it has one."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.recipe.seed)
        model: Any = AutoModelForCausalLM.from_pretrained(str(self.start), dtype=load_dtype(recipe=self.recipe))
        return model if self.recipe.peft is None else with_adapter(model, lora=self.recipe.peft)

    def publish(self, trainer: Any) -> None:
        """Save what `trainer` trained as the model folder `out`, written atomically: the start's architecture in
        the origin's dtype (a LoRA adapter merged onto the start). Every rank takes part in saving (FSDP and
        ZeRO-3 gather the weights); only the main process publishes.

        Raises:
            OutputExistsError: `out` exists and `overwrite` is false.
            ModelFolderError: the trainer saved no weights.
        """
        staged = self.scratch / "model"
        trainer.save_model(str(staged))
        if trainer.is_world_process_zero():
            with atomic_output_dir(self.out, overwrite=self.overwrite) as tmp:
                write_candidate(staged=staged, start=self.start, dtype=folder_dtype(self.origin), out=tmp)
                self.tokenizer.save_pretrained(str(tmp))
                if (self.origin / GENERATION_CONFIG).is_file():
                    shutil.copyfile(self.origin / GENERATION_CONFIG, tmp / GENERATION_CONFIG)
            shutil.rmtree(staged, ignore_errors=True)  # the trainer's copy: at most one on scratch disk at a time


class Curves(TrainerCallback):
    """Collects the loss at every step and, when asked, eval records every `eval_every` steps, over every stage
    of a fine-tune: a stage's steps are numbered after the stages before it (`offset`)."""

    def __init__(
        self,
        *,
        eval_every: int | None,
        suite: Suite | None,
        tokenizer: Any,
        progress: Callable[[int, int], None] | None,
        total_steps: int,
    ) -> None:
        self.eval_every, self.suite, self.tokenizer, self.progress = eval_every, suite, tokenizer, progress
        self.total_steps, self.offset, self.begun = total_steps, 0, False
        self.losses: list[tuple[int, float]] = []
        self.evals: list[tuple[int, tuple[EvalRecord, ...]]] = []

    def begin(self, model: Any) -> None:
        """The curve's step 0: evaluate the first stage's start, once, however many stages there are."""
        if not self.begun:
            self.begun = True
            self.evaluate(model, 0)

    def evaluate(self, model: Any, step: int) -> None:
        """Evaluate `model` (in memory) on the suite, when one was given, as the curve's point at `step`."""
        if self.eval_every is not None and self.suite is not None:
            records = evaluate_model(model=plain_model(model), tokenizer=self.tokenizer, suite=self.suite)
            self.evals.append((step, tuple(records)))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.begin(model)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append((self.offset + state.global_step, float(logs["loss"])))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = self.offset + state.global_step  # counted over every stage
        if self.progress is not None:
            self.progress(step, self.total_steps)
        if self.eval_every and (step % self.eval_every == 0 or step == self.total_steps):
            self.evaluate(model, step)
