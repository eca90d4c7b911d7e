"""A model's tokenizer as files on disk: where they are and the digest of their contents, read only
when vocabulary rows must be aligned by token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=False)
        return dict(tok.get_vocab())
