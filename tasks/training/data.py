"""Fine-tuning data as a track names it: a JSONL file of `{"prompt", "completion"}` records, read and checked
line by line (no tokenizer, no torch: `graft track add` checks a track's data with it)."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import FinetuneDataError


def read_pairs(*, data: Path) -> list[dict[str, str]]:
    """The `{"prompt", "completion"}` records of a JSONL file.

    Raises:
        FinetuneDataError: the file is missing, empty, or a line lacks a string prompt or completion.
    """
    try:
        lines = Path(data).read_text().splitlines()
    except OSError as exc:
        raise FinetuneDataError(f"fine-tuning data {data} cannot be read: {exc}.", path=data) from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinetuneDataError(
                f"{data}:{number} is not JSON ({exc}); write one JSON object per line.", path=data
            ) from exc
        if not (
            isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)
        ):
            raise FinetuneDataError(f'{data}:{number} needs string fields "prompt" and "completion".', path=data)
        rows.append({"prompt": row["prompt"], "completion": row["completion"]})
    if not rows:
        raise FinetuneDataError(f"fine-tuning data {data} holds no examples.", path=data)
    return rows
