"""Fine-tuning data as a track names it: a JSONL file of `{"prompt", "completion"}` pairs, or of chat
conversations (`{"messages": [{"role", "content"}, ...]}`, the format used across the Hub), one format per file,
read and checked line by line (no tokenizer, no torch: `graft track add` checks a track's data with it); and a DPO
stage's preference pairs, in TRL's two formats (`{"prompt", "chosen", "rejected"}` strings, or `chosen`/`rejected`
conversations with an optional `prompt` conversation)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import FinetuneDataError

ROLES = ("system", "user", "assistant", "tool")
"""The roles a conversation's messages may have (a model's chat template may know fewer: it is asked at tokenizing)."""
PAIR, CHAT = "prompt/completion pairs", "conversations (messages)"
TEXT_PREFERENCE, CHAT_PREFERENCE = "prompt/chosen/rejected strings", "chosen/rejected conversations"
CHAT_PROMPT_PREFERENCE = "chosen/rejected conversations after a prompt conversation"


def read_examples(*, data: Path) -> list[dict[str, Any]]:
    """The examples of a JSONL file: all `{"prompt", "completion"}` pairs, or all `{"messages": [...]}`
    conversations, each with at least one assistant turn to learn from; each with its `line` in the file.

    Raises:
        FinetuneDataError: the file is missing or empty, or a line is not JSON, mixes formats with the lines before
            it, or is not an example of its format (the message names the file, the line and the fix).
    """
    return _read_jsonl(data, what="fine-tuning data", parse=_example)


def _read_jsonl(data: Path, *, what: str, parse: Callable[..., tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    try:
        lines = Path(data).read_text().splitlines()
    except OSError as exc:
        raise FinetuneDataError(f"{what} {data} cannot be read: {exc}.", path=data) from exc
    rows: list[dict[str, Any]] = []
    first: tuple[str, int] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinetuneDataError(
                f"{data}:{number} is not JSON ({exc}); write one JSON object per line.", path=data
            ) from exc
        kind, example = parse(row, where=f"{data}:{number}", path=data)
        if first is None:
            first = (kind, number)
        elif kind != first[0]:
            raise FinetuneDataError(
                f"{data}:{number} holds {kind}, but line {first[1]} holds {first[0]}: a file holds one format; "
                "split it into two files (or convert one format to the other).",
                path=data,
            )
        rows.append({**example, "line": number})
    if not rows:
        raise FinetuneDataError(f"{what} {data} holds no examples.", path=data)
    return rows


def read_preferences(*, data: Path) -> list[dict[str, Any]]:
    """The preference pairs of a DPO stage's JSONL file: all `{"prompt", "chosen", "rejected"}` strings, or all
    `{"chosen": [...], "rejected": [...]}` conversations (with an optional `"prompt": [...]`, the turns before the
    answers); each with its `line` in the file.

    Raises:
        FinetuneDataError: the file is missing or empty, or a line is not JSON, mixes formats with the lines before
            it, lacks `chosen` or `rejected`, or is not a pair of its format (the message names the file, the line
            and the fix).
    """
    return _read_jsonl(data, what="preference data", parse=_preference)


def read_pairs(*, data: Path) -> list[dict[str, str]]:
    """The `{"prompt", "completion"}` pairs of a JSONL file (what the held-out probes of `auto` tracks score).

    Raises:
        FinetuneDataError: as `read_examples`, or the file holds conversations.
    """
    rows = read_examples(data=data)
    if "messages" in rows[0]:
        raise FinetuneDataError(
            f"{data} holds conversations; this needs prompt/completion pairs (an auto track's held-out probe "
            "scores them): give it pairs, or use a probe of kind zero_shot.",
            path=data,
        )
    return [{"prompt": row["prompt"], "completion": row["completion"]} for row in rows]


def _example(row: object, *, where: str, path: Path) -> tuple[str, dict[str, Any]]:
    if isinstance(row, dict) and ("chosen" in row or "rejected" in row):
        raise FinetuneDataError(
            f"{where} is a preference pair (chosen/rejected); fine-tuning data holds prompt/completion pairs or "
            "messages: give preference pairs to a DPO stage.",
            path=path,
        )
    if isinstance(row, dict) and "messages" in row:
        return CHAT, {"messages": _messages(row["messages"], where=where, path=path)}
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return PAIR, {"prompt": row["prompt"], "completion": row["completion"]}
    raise FinetuneDataError(
        f'{where} needs string fields "prompt" and "completion", or a "messages" list of {{"role", "content"}}.',
        path=path,
    )


def _preference(row: object, *, where: str, path: Path) -> tuple[str, dict[str, Any]]:
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        has = f"it has {', '.join(sorted(row)) or 'no fields'}" if isinstance(row, dict) else "it is not an object"
        raise FinetuneDataError(
            f'{where} is not a preference pair ({has}): a DPO stage needs "chosen" and "rejected" on every line, '
            'with a "prompt" ({"prompt": "2+2=", "chosen": "4", "rejected": "5"}), or as conversations.',
            path=path,
        )
    if all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected")):
        return TEXT_PREFERENCE, {k: row[k] for k in ("prompt", "chosen", "rejected")}
    if isinstance(row["chosen"], list) and isinstance(row["rejected"], list):
        pair = {k: _messages(row[k], where=f"{where}: {k}", path=path) for k in ("chosen", "rejected")}
        if "prompt" in row:
            prompt = row["prompt"]
            if not isinstance(prompt, list) or not prompt:
                raise FinetuneDataError(
                    f'{where}: with chosen/rejected conversations, "prompt" is a conversation too (a list of '
                    '{"role", "content"}): the turns before the answers.',
                    path=path,
                )
            pair["prompt"] = _messages(prompt, where=f"{where}: prompt", path=path, answer=False)
            return CHAT_PROMPT_PREFERENCE, pair
        return CHAT_PREFERENCE, pair
    raise FinetuneDataError(
        f'{where}: "chosen" and "rejected" are both strings (with a string "prompt") or both conversations '
        '(lists of {"role", "content"}).',
        path=path,
    )


def _messages(messages: object, *, where: str, path: Path, answer: bool = True) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise FinetuneDataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}}.', path=path)
    turns = []
    for i, message in enumerate(messages):
        ok = isinstance(message, dict) and isinstance(message.get("content"), str)
        if not ok or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            why = f"role {role!r} is not one of {', '.join(ROLES)}" if ok else 'it needs string "role" and "content"'
            raise FinetuneDataError(f"{where}: message {i}: {why}.", path=path)
        turns.append({"role": message["role"], "content": message["content"]})
    if answer and not any(turn["role"] == "assistant" for turn in turns):
        raise FinetuneDataError(
            f"{where}: the conversation has no assistant turn, so nothing to learn from; add the answer as an "
            '{"role": "assistant", ...} message, or drop the line.',
            path=path,
        )
    return turns
