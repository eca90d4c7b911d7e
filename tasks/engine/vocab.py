"""Aligning vocabulary rows (embedding and output-embedding matrices) between models.

Rows are matched by token string, never by position alone and never truncated:

- rows the fine-tuned model has beyond its base (tokens added in fine-tuning) are *carried* into the
  output unchanged;
- when the target's vocabulary differs from the source base's, each target row takes the Δ of the
  source row with the same token string (*transferred*); target rows with no counterpart are *kept*
  as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ...errors import ShapeMismatchError, VocabularyError
from ..io.checkpoints import ModelFolder
from ..io.stfile import TensorInfo
from ..io.tokenizers import Tokenizer

VOCAB_TENSOR_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "embed_out.weight",
    "tok_embeddings.weight",
)

TokenizerSource = Literal["target", "finetuned", "target+added"]


def is_vocab_tensor(name: str, shape: tuple[int, ...]) -> bool:
    """Whether a tensor is indexed by token id in its first dimension."""
    return len(shape) == 2 and name.endswith(VOCAB_TENSOR_SUFFIXES)


@dataclass(frozen=True)
class RowPlan:
    """How the output's vocabulary rows are made.

    `source[r]` is the source-side row whose Δ target row `r` takes, or -1 to keep the row;
    `source is None` means the identity. `carried` lists fine-tuned rows appended after the target's.
    """

    target_rows: int
    source: np.ndarray | None
    carried: np.ndarray
    tokenizer_from: TokenizerSource
    added_tokens: tuple[str, ...] = field(default=())

    @property
    def identity(self) -> bool:
        """True when every tensor can be streamed row for row, with nothing carried."""
        return self.source is None and self.carried.size == 0

    @property
    def out_rows(self) -> int:
        """Rows of the output's vocabulary tensors."""
        return self.target_rows + self.carried.size

    def counts(self) -> dict[str, int]:
        """Rows that took each path: transferred, kept, carried."""
        transferred = self.target_rows if self.source is None else int((self.source >= 0).sum())
        return {"transferred": transferred, "kept": self.target_rows - transferred, "carried": self.carried.size}


def plan_rows(
    *,
    base_rows: int,
    finetuned_rows: int,
    target_rows: int,
    base: Tokenizer,
    finetuned: Tokenizer,
    target: Tokenizer,
) -> RowPlan:
    """Plan the vocabulary rows of a transfer from (fine-tuned, base) onto target.

    Raises:
        VocabularyError: rows must be aligned by token and a tokenizer is missing. Check the
            fine-tuned vocabulary with :func:`check_extension` first.
    """
    source: np.ndarray | None = None
    target_vocab: dict[str, int] | None = None
    if base_rows != target_rows or base.digest != target.digest:
        base_vocab = base.vocab(role="source base")
        target_vocab = target.vocab(role="target")
        if base_vocab != target_vocab or base_rows != target_rows:
            id_to_token = {i: t for t, i in target_vocab.items()}
            index = [base_vocab.get(id_to_token.get(r, ""), -1) for r in range(target_rows)]
            source = np.array([i if 0 <= i < base_rows else -1 for i in index], dtype=np.int64)
    extra = range(base_rows, finetuned_rows)
    if not extra:
        return RowPlan(target_rows=target_rows, source=source, carried=_longs([]), tokenizer_from="target")
    if source is None:
        return RowPlan(target_rows=target_rows, source=None, carried=_longs(list(extra)), tokenizer_from="finetuned")
    assert target_vocab is not None
    ft_tokens = {i: t for t, i in finetuned.vocab(role="fine-tuned").items()}
    carried = [i for i in extra if i in ft_tokens and ft_tokens[i] not in target_vocab]
    if carried and target_rows != len(target_vocab):
        raise VocabularyError(
            f"the target has {target_rows} vocabulary rows but {len(target_vocab)} tokens; tokens added in "
            "fine-tuning cannot be appended after padding rows. Resize the target's embeddings to its "
            "tokenizer first.",
            role="target",
        )
    return RowPlan(
        target_rows=target_rows,
        source=source,
        carried=_longs(carried),
        tokenizer_from="target+added",
        added_tokens=tuple(ft_tokens[i] for i in carried),
    )


def check_extension(*, base_rows: int, finetuned_rows: int, base: Tokenizer, finetuned: Tokenizer) -> None:
    """Check that the fine-tuned vocabulary extends its base's (the same tokens at the same ids).

    Raises:
        VocabularyError: the fine-tuned model has fewer rows, or a shared id maps to another token.
    """
    if finetuned_rows < base_rows:
        raise VocabularyError(
            f"the fine-tuned model has {finetuned_rows} vocabulary rows, fewer than its base's {base_rows}; "
            "a fine-tuned model may add tokens but not remove them.",
            role="fine-tuned",
        )
    if base.digest == finetuned.digest or base.folder is None or finetuned.folder is None:
        return
    base_tokens = {i: t for t, i in base.vocab(role="base").items()}
    ft_tokens = {i: t for t, i in finetuned.vocab(role="fine-tuned").items()}
    for i, tok in sorted(base_tokens.items()):
        if i < base_rows and ft_tokens.get(i) != tok:
            raise VocabularyError(
                f"token id {i} is {tok!r} in the base but {ft_tokens.get(i)!r} in the fine-tuned model; "
                "the fine-tuned vocabulary must extend the base's (new tokens appended at the end).",
                role="fine-tuned",
            )


def _longs(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def row_plan(
    target: ModelFolder,
    *,
    base_rows: int | None,
    finetuned_rows: int | None,
    base_tok: Tokenizer,
    finetuned_tok: Tokenizer,
) -> RowPlan | None:
    """The vocabulary plan, or None when the models have no vocabulary tensors."""
    target_rows = vocab_rows(target.tensors)
    if target_rows is None or base_rows is None or finetuned_rows is None:
        return None
    check_extension(base_rows=base_rows, finetuned_rows=finetuned_rows, base=base_tok, finetuned=finetuned_tok)
    return plan_rows(
        base_rows=base_rows,
        finetuned_rows=finetuned_rows,
        target_rows=target_rows,
        base=base_tok,
        finetuned=finetuned_tok,
        target=tokenizer_of(target),
    )


def tokenizer_of(model: ModelFolder) -> Tokenizer:
    return Tokenizer(folder=model.path if model.tokenizer_files() else None, digest=model.tokenizer_digest())


def vocab_rows(tensors: dict[str, TensorInfo]) -> int | None:
    """Rows of the vocabulary tensors (they must agree), or None when there are none.

    Raises:
        ShapeMismatchError: two vocabulary tensors of one model have different row counts.
    """
    rows = {n: i.shape[0] for n, i in tensors.items() if is_vocab_tensor(n, i.shape)}
    if len(set(rows.values())) > 1:
        raise ShapeMismatchError(
            f"vocabulary tensors disagree on their number of rows: {rows}", tensor=next(iter(rows))
        )
    return next(iter(rows.values()), None)
