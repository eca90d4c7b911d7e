"""Fine-tuning: a model folder, a JSONL of prompt/completion pairs and a recipe in, a model folder out.

A recipe may train in stages (`Recipe.stages`): sft on pairs or conversations, then DPO on preference pairs
(`dpo.py`, TRL's `DPOTrainer`), each stage starting from the model the one before wrote.

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
import gc
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PrinterCallback, TrainingArguments

from ...errors import FinetuneConfigError, ModelFolderError, OutputExistsError
from ...fs import scratch_dir
from ..evaluate import EvalRecord
from ..suite import Suite
from .chat import IGNORE, check_chat_pairs, tokenize_chat
from .data import read_examples, read_preferences
from .dpo import check_prompt_lengths, train_dpo
from .hf_trainer import Curves, StageRun, trainer_args
from .recipe import Recipe, Stage
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
    """Fine-tune the model folder `model_dir` on `data` with `recipe`, stage by stage; write the result to `out_dir`.

    Args:
        model_dir: a Hugging Face model folder with its tokenizer.
        data: JSONL of `{"prompt": ..., "completion": ...}` records, or of `{"messages": [...]}` conversations (the
            chat template applied, the loss on the assistant turns): the data of an sft stage that names none.
        recipe: the training set-up, and its stages (none: one sft stage).
        out_dir: the output model folder, written atomically; a stage before the last writes its model beside it,
            removed once the next stage has written its own.
        eval_every: with `eval_suite`, evaluate the model in memory at step 0 and every this many steps.
        eval_suite: the suite for `eval_every`.
        threads: torch CPU threads (None leaves torch's setting).
        overwrite: replace `out_dir` if it exists.
        progress: called with (steps done, steps in all, every stage counted) after every optimizer step.

    Raises:
        ModelFolderError: `model_dir` is not a model folder.
        FinetuneDataError: a stage's data cannot be used (every stage's is checked before any training starts).
        OutputExistsError: `out_dir` exists and `overwrite` is false.
        FinetuneConfigError: `eval_every` is given without `eval_suite`, or is not positive.
    """
    from transformers import AutoTokenizer

    start, started_at = time.perf_counter(), datetime.now(UTC)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelFolderError(f"{model_dir} has no config.json; pass a Hugging Face model folder.", path=model_dir)
    if eval_every is not None and (eval_suite is None or eval_every < 1):
        raise FinetuneConfigError(
            "eval_every needs a positive value and an eval_suite to evaluate on.", field="eval_every"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    stages = recipe.staged()
    inputs = [_stage_input(stage, data=data, recipe=recipe, tokenizer=tokenizer) for stage in stages]
    curves = Curves(
        eval_every=eval_every, suite=eval_suite, tokenizer=tokenizer, progress=progress,
        total_steps=recipe.total_steps,
    )  # fmt: skip
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass overwrite to replace it.", path=out_dir)
    here, tokens = model_dir, 0
    with scratch_dir(prefix=SCRATCH_PREFIX) as scratch:
        try:
            for number, (stage, rows) in enumerate(zip(stages, inputs, strict=True), 1):
                last = number == len(stages)
                target = out_dir if last else _stage_dir(out_dir, number=number, kind=stage.kind)
                staged = recipe.for_stage(stage)
                train = _sft if stage.kind == "sft" else train_dpo
                run = StageRun(
                    start=here, origin=model_dir, tokenizer=tokenizer, recipe=staged, stage=stage, out=target,
                    overwrite=overwrite or not last, scratch=scratch / f"stage{number}", curves=curves,
                )  # fmt: skip
                trainer = train(run, **rows)
                tokens += int(trainer.state.num_input_tokens_seen)
                device, processes = str(trainer.args.device), trainer.args.world_size
                del trainer  # its model and optimizer state are not the next stage's to carry
                _free_memory()
                _wait_for_everyone()  # the next stage's processes read what the main process wrote
                _drop_stage(here, first=model_dir)
                here = target
                curves.offset += staged.steps
        finally:
            if here != out_dir:
                _drop_stage(here, first=model_dir)  # a stage failed: nothing of the run is left beside out_dir
    return FinetuneResult(
        out_dir=out_dir.resolve(),
        loss_curve=tuple(curves.losses),
        eval_curve=tuple(curves.evals),
        seconds=time.perf_counter() - start,
        tokens=tokens,
        device=device,
        processes=processes,
        started_at=started_at,
        finished_at=datetime.now(UTC),
    )


def _stage_dir(out_dir: Path, *, number: int, kind: str) -> Path:
    """Where a stage before the last writes its model: beside `out_dir`, named as an unfinished output of this run
    (`.<out>.partial-<pid>-stage<N><kind>`, the pid of the launch's agent when several processes train), so that a
    run killed midway leaves what the next output there removes."""
    owner = os.getppid() if torch.distributed.is_torchelastic_launched() else os.getpid()
    return out_dir.with_name(f".{out_dir.name}.partial-{owner}-stage{number}{kind}")


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _stage_input(stage: Stage, *, data: Path, recipe: Recipe, tokenizer: Any) -> dict[str, Any]:
    """A stage's data, read, checked and (sft) tokenized: the keyword its trainer takes it by.

    Raises:
        FinetuneDataError: the data cannot be used.
    """
    path, staged = stage.data or data, recipe.for_stage(stage)
    if stage.kind == "dpo":
        pairs = read_preferences(data=path)
        check_chat_pairs(tokenizer=tokenizer, pairs=pairs, data=path)
        check_prompt_lengths(tokenizer=tokenizer, pairs=pairs, recipe=staged, data=path)
        return {"pairs": pairs}
    return {
        "examples": [
            tokenize_example(tokenizer=tokenizer, example=e, recipe=staged, where=f"{path}:{e['line']}")
            for e in read_examples(data=path)
        ]
    }


def _sft(run: StageRun, *, examples: list[dict[str, list[int]]]) -> Any:
    """An sft stage: the transformers `Trainer` on tokenized `examples`, from `run`'s start, written to `run.out`;
    return the trainer, after training.

    Raises:
        OutputExistsError: `run.out` exists and `run.overwrite` is false.
    """
    from transformers import Trainer

    model = run.load_model()
    trainer = Trainer(
        model=model,
        args=trainer_args(TrainingArguments, recipe=run.recipe, scratch=run.scratch),
        train_dataset=examples,
        data_collator=_Collator(pad_id=run.tokenizer.pad_token_id or 0),
        processing_class=run.tokenizer,
        callbacks=[run.curves],
    )
    trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed
    if run.recipe.steps:
        trainer.train()
    else:
        run.curves.begin(model)
    run.publish(trainer)
    return trainer


def _drop_stage(folder: Path, *, first: Path) -> None:
    """Remove a stage's model folder once the next stage has read it (never `first`, the fine-tune's input)."""
    from accelerate import PartialState

    if folder != first and PartialState().is_main_process:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


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
    base = ns.recipe.resolve().parent
    recipe = recipe.model_copy(update={"stages": tuple(stage.resolved(base) for stage in recipe.stages)})
    result = finetune(model_dir=ns.model_dir, data=ns.data, recipe=recipe, out_dir=ns.out, overwrite=ns.overwrite)
    if ns.report is not None and _is_main_process():
        result.report().write(ns.report)
    print(json.dumps({"out_dir": str(result.out_dir), "final_loss": result.loss_curve[-1:], "seconds": result.seconds}))


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


if __name__ == "__main__":
    main()
