"""A DPO stage (Rafailov et al. 2023, "Direct Preference Optimization"): TRL's `DPOTrainer` on preference pairs,
from the model folder the stage before left.

The reference model is the stage's start: a second copy of the weights when every weight trains (TRL makes it),
none with LoRA, where TRL scores the reference with the adapter switched off (its `ref` adapter is the untrained
copy of the new one). Runs under the same launch set-ups as the sft stage (one process, DDP, FSDP, ZeRO-3), with
the same recipe fields, and writes the same kind of folder.
"""

from __future__ import annotations

from typing import Any

from .hf_trainer import StageRun, trainer_args
from .recipe import DPO_BETA

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def train_dpo(run: StageRun, *, pairs: list[dict[str, Any]]) -> Any:
    """Train `run`'s start with DPO on `pairs` (rows of `read_preferences`; the stage's `beta`, the recipe's
    `seq_len` capping prompt plus answer) and write it to `run.out`; return the trainer, after training (its state
    holds the tokens seen).

    Raises:
        OutputExistsError: `run.out` exists and `run.overwrite` is false.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    recipe = run.recipe
    args = trainer_args(
        DPOConfig, recipe=recipe, scratch=run.scratch, beta=run.stage.beta or DPO_BETA, max_length=recipe.seq_len
    )
    rows = [{k: row[k] for k in PAIR_FIELDS if k in row} for row in pairs]
    trainer = DPOTrainer(
        model=run.load_model(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=run.tokenizer,
        callbacks=[run.curves],
    )
    trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed
    if recipe.steps:
        trainer.train()
    run.publish(trainer)
    return trainer
