"""Conversations as training examples: the model's chat template applied, the loss on the assistant turns only;
and a DPO stage's conversation pairs checked against the template before any training.

Each assistant turn's span is found by rendering the conversation up to the turn (with the template's generation
prompt) and through it: the characters between are the turn's content and whatever the template closes it with.
The whole conversation is tokenized once, and a token is learned from when its characters lie in a span.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import FinetuneDataError
from .recipe import Recipe

IGNORE = -100
"""The label of a token the loss skips."""


def tokenize_chat(
    *, tokenizer: Any, messages: list[dict[str, str]], recipe: Recipe, where: str
) -> dict[str, list[int]]:
    """Token ids and labels of one conversation (`where` names it: `FILE:LINE`); labels are -100 outside its
    assistant turns when `recipe.completion_only`.

    Raises:
        FinetuneDataError: the tokenizer has no chat template, or the template refuses the conversation (a role it
            does not know) or does not render it turn by turn.
    """
    _needs_template(tokenizer, where=where)
    text = _render(tokenizer, messages, where=where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], where=where, generation=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], where=where)
        if not (through.startswith(before) and text.startswith(through)):
            raise FinetuneDataError(
                f"{where}: the chat template does not render this conversation turn by turn (message {i} changes "
                "the text before it), so its assistant turns cannot be told apart; give it as prompt/completion "
                "pairs.",
                path=where.rpartition(":")[0],
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    learned = [any(a <= s and e <= b for a, b in spans) for s, e in offsets]
    labels = [t if ok or not recipe.completion_only else IGNORE for t, ok in zip(ids, learned, strict=True)]
    return {"input_ids": ids[: recipe.seq_len], "labels": labels[: recipe.seq_len]}


def check_chat_pairs(*, tokenizer: Any, pairs: list[dict[str, Any]], data: Path) -> None:
    """Check that the model's chat template renders every conversation of a DPO stage's pairs (rows of
    `read_preferences` from the file `data`): the prompt turns followed by the chosen turns, and by the rejected
    ones. Pairs of strings need no template.

    Raises:
        FinetuneDataError: the tokenizer has no chat template, or the template refuses a conversation (the message
            names the file and the line).
    """
    for pair in pairs:
        if isinstance(pair["chosen"], str):
            return  # a file holds one format
        where = f"{data}:{pair['line']}"
        _needs_template(tokenizer, where=where)
        for answer in (pair["chosen"], pair["rejected"]):
            _render(tokenizer, [*pair.get("prompt", []), *answer], where=where)


def _needs_template(tokenizer: Any, *, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise FinetuneDataError(
            f"{where}: a conversation needs the model's chat template, and its tokenizer has none; give the data "
            "as prompt/completion pairs, or a model whose tokenizer_config.json has a chat_template.",
            path=where.rpartition(":")[0],
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], *, where: str, generation: bool = False) -> str:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation))
    except Exception as e:  # jinja2's TemplateError, or whatever the template raises for a role it does not know
        raise FinetuneDataError(
            f"{where}: the model's chat template refused the conversation ({e}); use the roles it knows.",
            path=where.rpartition(":")[0],
        ) from None
