"""A model's tokenizer as files on disk: where they are and the digest of their contents, read only
when vocabulary rows must be aligned by token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import VocabularyError


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer folder and the digest of its files (None where a model has no tokenizer)."""

    folder: Path | None
    digest: str | None

    def vocab(self, *, role: str) -> dict[str, int]:
        """token → id, added tokens included.

        Raises:
            VocabularyError: there is no tokenizer to read.
        """
        if self.folder is None:
            raise VocabularyError(
                f"the {role} model has no tokenizer files, and its vocabulary rows must be aligned by "
                "token; add its tokenizer to the folder.",
                role=role,
            )
        vocab = _fast_vocab(self.folder)
        if vocab is not None:
            return vocab
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=False)
        return dict(tok.get_vocab())


def _fast_vocab(folder: Path) -> dict[str, int] | None:
    """token → id read from `tokenizer.json` with the tokenizers library, or None where transformers could see
    another vocabulary (it adds the tokens its config names that `tokenizer.json` lacks; `added_tokens.json` is
    a slow tokenizer's): then only transformers' own reading is exact.

    Reading it this way keeps transformers (and with it torch) out of the engine's commands when the models'
    tokenizer files differ, as a fine-tune's chat template makes them."""
    if not (folder / "tokenizer.json").is_file() or (folder / "added_tokens.json").is_file():
        return None
    from tokenizers import Tokenizer as FastTokenizer

    vocab: dict[str, int] = FastTokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
    config = _json_object(folder / "tokenizer_config.json")
    for index, entry in (config.get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or vocab.get(content) != int(index):
            return None
    special = {**_json_object(folder / "special_tokens_map.json"), **config}
    for key, value in special.items():
        if key.endswith("_token") or key == "additional_special_tokens":
            for token in value if isinstance(value, list) else [value]:
                content = token.get("content") if isinstance(token, dict) else token
                if isinstance(content, str) and content not in vocab:
                    return None
    return vocab


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
