"""A DPO stage (Rafailov et al. 2023, "Direct Preference Optimization"): TRL's `DPOTrainer` on preference pairs,
from the model folder the stage before left.

The reference model is the stage's start: a second copy of the weights when every weight trains (TRL makes it),
none with LoRA, where TRL scores the reference with the adapter switched off (its `ref` adapter is the untrained
copy of the new one). Runs under the same launch set-ups as the sft stage (one process, DDP, FSDP, ZeRO-3), with
the same recipe fields, and writes the same kind of folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ...errors import FinetuneDataError
from .candidate import plain_model
from .hf_trainer import StageRun, trainer_args
from .recipe import Recipe

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def train_dpo(run: StageRun, *, pairs: list[dict[str, Any]]) -> Any:
    """Train `run`'s start with DPO on `pairs` (rows of `read_preferences`; the stage's `beta`, the recipe's
    `seq_len` capping prompt plus answer) and write it to `run.out`; return the trainer, after training (its state
    holds the tokens seen). With the recipe's `chat_template`, string pairs are formatted as the sft stage formats
    its pairs: the prompt a user turn, each answer an assistant turn.

    TRL gives a tokenizer without a pad token one, and writes its id into the model's config; the output keeps the
    start's tokenizer and pad token ids.

    Raises:
        OutputExistsError: `run.out` exists and `run.overwrite` is false.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    recipe = run.recipe
    args = trainer_args(
        DPOConfig, recipe=recipe, scratch=run.scratch, beta=run.stage.dpo_beta, max_length=recipe.seq_len
    )
    model = run.load_model()
    pads = _pad_ids(model)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([_row(pair, chat=recipe.chat_template) for pair in pairs]),
        processing_class=copy.deepcopy(run.tokenizer),
        callbacks=[run.curves],
    )
    trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed
    if recipe.steps:
        trainer.train()
    else:
        run.curves.begin(model)
    _set_pad_ids(model, pads)
    run.publish(trainer)
    return trainer


def check_prompt_lengths(*, tokenizer: Any, pairs: list[dict[str, Any]], recipe: Recipe, data: Path) -> None:
    """Check that every pair's prompt leaves room for an answer in the recipe's `seq_len` tokens (TRL would drop
    the pair silently, and a stage whose pairs were all dropped fails midway).

    Raises:
        FinetuneDataError: a prompt takes `seq_len` tokens or more (the message names the file and the line).
    """
    for pair in pairs:
        prompt = _row(pair, chat=recipe.chat_template).get("prompt", [])
        if isinstance(prompt, str):
            length = len(tokenizer(prompt)["input_ids"])
        else:
            rendered = (
                tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) if prompt else ""
            )
            length = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        if length >= recipe.seq_len:
            raise FinetuneDataError(
                f"{data}:{pair['line']}: the prompt is {length} tokens and the recipe's seq_len is {recipe.seq_len}, "
                "which leaves no room for the answers; raise seq_len or shorten the prompt.",
                path=data,
            )


def _row(pair: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    row = {k: pair[k] for k in PAIR_FIELDS if k in pair}
    if chat and isinstance(row["chosen"], str):
        return {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
    return row


def _pad_ids(model: Any) -> tuple[Any, Any]:
    plain = plain_model(model)
    return plain.config.get_text_config().pad_token_id, plain.generation_config.pad_token_id


def _set_pad_ids(model: Any, pads: tuple[Any, Any]) -> None:
    plain = plain_model(model)
    plain.config.get_text_config().pad_token_id, plain.generation_config.pad_token_id = pads
