"""Fine-tuning: a model folder, a JSONL of prompt/completion pairs and a recipe in, a model folder out.

Runs with the transformers `Trainer` (and so with accelerate): deterministic on the CPU for a seed,
bf16 and multi-GPU on GPU workers through `accelerate launch` with a config from
`deployments/accelerate/`::

    accelerate launch --config_file deployments/accelerate/fsdp.yaml -m graftwork.tasks.training.finetune \\
        --model-dir BASE --data train.jsonl --recipe recipe.yaml --out OUT

The output is a normal model folder in the base's dtype, with the base's tokenizer and generation
config; optimizer state is never written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PrinterCallback, TrainerCallback

from ...errors import FinetuneConfigError, ModelFolderError
from ...fs import atomic_output_dir, scratch_dir
from ..evaluate import EvalRecord, evaluate_model
from ..io.layout import GENERATION_CONFIG
from ..suite import Suite
from .candidate import folder_dtype, load_dtype, with_adapter, write_candidate
from .chat import IGNORE, tokenize_chat
from .data import read_examples
from .recipe import Recipe
from .report import FinetuneReport

SCRATCH_PREFIX = "graft-finetune-"
"""The trainer's scratch folders in the temp dir: `graft-finetune-<pid>-<random>`."""


@dataclass(frozen=True)
class FinetuneResult:
    """Where the model went, and how training went: the loss (and, when asked, eval records) by step,
    the input tokens seen (padding excluded, all processes), where it ran and when."""

    out_dir: Path
    loss_curve: tuple[tuple[int, float], ...]
    eval_curve: tuple[tuple[int, tuple[EvalRecord, ...]], ...]
    seconds: float
    tokens: int = 0
    device: str = "cpu"
    processes: int = 1
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def tokens_per_second(self) -> float:
        """Training throughput over the whole run."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> FinetuneReport:
        """The run without its eval curve: what the report file holds."""
        return FinetuneReport(
            out_dir=self.out_dir, loss_curve=self.loss_curve, seconds=self.seconds, tokens=self.tokens,
            device=self.device, processes=self.processes, started_at=self.started_at, finished_at=self.finished_at,
        )  # fmt: skip


def tokenize_pair(*, tokenizer: Any, prompt: str, completion: str, recipe: Recipe) -> dict[str, list[int]]:
    """Token ids and labels of one example; labels are -100 on the prompt when `completion_only`."""
    if recipe.chat_template:
        prompt_text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        full_text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
        )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"][len(prompt_ids) :]
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + completion_ids)[: recipe.seq_len]
    masked = [IGNORE] * len(prompt_ids) if recipe.completion_only else prompt_ids
    return {"input_ids": ids, "labels": (masked + completion_ids)[: recipe.seq_len]}


def tokenize_example(*, tokenizer: Any, example: dict[str, Any], recipe: Recipe, where: str) -> dict[str, list[int]]:
    """Token ids and labels of one example of `read_examples` (a pair, or a conversation; `where` names it).

    Raises:
        FinetuneDataError: a conversation the model's chat template cannot take (see `tokenize_chat`).
    """
    if "messages" in example:
        return tokenize_chat(tokenizer=tokenizer, messages=example["messages"], recipe=recipe, where=where)
    return tokenize_pair(tokenizer=tokenizer, prompt=example["prompt"], completion=example["completion"], recipe=recipe)


def finetune(
    *,
    model_dir: Path,
    data: Path,
    recipe: Recipe,
    out_dir: Path,
    eval_every: int | None = None,
    eval_suite: Suite | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune the model folder `model_dir` on `data` with `recipe`; write the result to `out_dir`.

    Args:
        model_dir: a Hugging Face model folder with its tokenizer.
        data: JSONL of `{"prompt": ..., "completion": ...}` records, or of `{"messages": [...]}` conversations (the
            chat template applied, the loss on the assistant turns).
        recipe: the training set-up.
        out_dir: the output model folder, written atomically.
        eval_every: with `eval_suite`, evaluate the model in memory at step 0 and every this many steps.
        eval_suite: the suite for `eval_every`.
        threads: torch CPU threads (None leaves torch's setting).
        overwrite: replace `out_dir` if it exists.
        progress: called with (steps done, steps in all) after every optimizer step.

    Raises:
        ModelFolderError: `model_dir` is not a model folder.
        FinetuneDataError: `data` cannot be used (checked before any training starts).
        OutputExistsError: `out_dir` exists and `overwrite` is false.
        FinetuneConfigError: `eval_every` is given without `eval_suite`, or is not positive.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    start, started_at = time.perf_counter(), datetime.now(UTC)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelFolderError(f"{model_dir} has no config.json; pass a Hugging Face model folder.", path=model_dir)
    if eval_every is not None and (eval_suite is None or eval_every < 1):
        raise FinetuneConfigError(
            "eval_every needs a positive value and an eval_suite to evaluate on.", field="eval_every"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    rows = read_examples(data=data)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples = [
        tokenize_example(tokenizer=tokenizer, example=e, recipe=recipe, where=f"{data}:{e['line']}") for e in rows
    ]
    torch.manual_seed(recipe.seed)
    base_dtype = folder_dtype(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=load_dtype(recipe=recipe))
    if recipe.peft is not None:
        model = with_adapter(model, lora=recipe.peft)
    curves = _Curves(eval_every=eval_every, suite=eval_suite, tokenizer=tokenizer, progress=progress)
    with scratch_dir(prefix=SCRATCH_PREFIX) as scratch:
        args = TrainingArguments(
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
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=_Collator(pad_id=tokenizer.pad_token_id or 0),
            processing_class=tokenizer,
            callbacks=[curves],
        )
        trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed
        if recipe.steps:
            trainer.train()
        else:
            curves.evaluate(model, 0)
        # Every rank takes part in saving (FSDP and ZeRO-3 gather the weights); only the main process publishes.
        staged = scratch / "model"
        trainer.save_model(str(staged))
        if trainer.is_world_process_zero():
            with atomic_output_dir(Path(out_dir), overwrite=overwrite) as tmp:
                write_candidate(staged=staged, start=model_dir, dtype=base_dtype, out=tmp)
                tokenizer.save_pretrained(str(tmp))
                if (model_dir / GENERATION_CONFIG).is_file():
                    shutil.copyfile(model_dir / GENERATION_CONFIG, tmp / GENERATION_CONFIG)
    return FinetuneResult(
        out_dir=Path(out_dir).resolve(),
        loss_curve=tuple(curves.losses),
        eval_curve=tuple(curves.evals),
        seconds=time.perf_counter() - start,
        tokens=int(trainer.state.num_input_tokens_seen),
        device=str(args.device),
        processes=args.world_size,
        started_at=started_at,
        finished_at=datetime.now(UTC),
    )


class _Collator:
    """Right-pads a batch; padding is masked out of attention and loss."""

    def __init__(self, *, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([b[key] + [value] * (width - len(b[key])) for b in batch])

        ids = pad("input_ids", self.pad_id)
        mask = torch.tensor([[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": pad("labels", IGNORE)}


class _Curves(TrainerCallback):
    """Collects the loss at every step and, when asked, eval records every `eval_every` steps."""

    def __init__(
        self,
        *,
        eval_every: int | None,
        suite: Suite | None,
        tokenizer: Any,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.eval_every, self.suite, self.tokenizer, self.progress = eval_every, suite, tokenizer, progress
        self.losses: list[tuple[int, float]] = []
        self.evals: list[tuple[int, tuple[EvalRecord, ...]]] = []

    def evaluate(self, model: Any, step: int) -> None:
        if self.eval_every is not None and self.suite is not None:
            plain = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA run's PeftModel
            records = evaluate_model(model=plain, tokenizer=self.tokenizer, suite=self.suite)
            self.evals.append((step, tuple(records)))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.evaluate(model, 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        if self.progress is not None:
            self.progress(step, state.max_steps)
        if self.eval_every and (step % self.eval_every == 0 or step == state.max_steps):
            self.evaluate(model, step)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m graftwork.tasks.training.finetune` (or under `accelerate launch -m ...`) on a recipe YAML file."""
    parser = argparse.ArgumentParser(prog="graftwork.tasks.training.finetune", description=main.__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, required=True, help="YAML with the fields of Recipe.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--report", type=Path, help="Write the run's report (FinetuneResult.report) here as JSON.")
    ns = parser.parse_args(argv)
    recipe = Recipe.model_validate(yaml.safe_load(ns.recipe.read_text()) or {})
    result = finetune(model_dir=ns.model_dir, data=ns.data, recipe=recipe, out_dir=ns.out, overwrite=ns.overwrite)
    if ns.report is not None and _is_main_process():
        result.report().write(ns.report)
    print(json.dumps({"out_dir": str(result.out_dir), "final_loss": result.loss_curve[-1:], "seconds": result.seconds}))


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


if __name__ == "__main__":
    main()
