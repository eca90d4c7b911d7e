"""How a track asks `recycle.mode: auto` to choose the start of a release's fine-tune: the `Probe`, a track's
`recycle.probe`. A model of its own, so that reading a track's config loads none of the probes' machinery."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ProbeKind(StrEnum):
    """How `auto` scores each start before the fine-tune."""

    ZERO_SHOT = "zero_shot"
    HELDOUT_LOSS = "heldout_loss"
    SHORT_FINETUNE = "short_finetune"


class ProbeScore(StrEnum):
    """What ranks the starts after each round of a `short_finetune` probe."""

    HELDOUT_LOSS = "heldout_loss"
    ZERO_SHOT = "zero_shot"


class Probe(BaseModel):
    """How `recycle.mode: auto` picks the start of a release's fine-tune (a track's `recycle.probe`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: ProbeKind = Field(
        default=ProbeKind.ZERO_SHOT,
        description="zero_shot: the probe suite's score of each start; heldout_loss: each start's loss on a "
        "held-out slice of the fine-tuning data; short_finetune: successive halving of short fine-tunes.",
    )
    alphas: tuple[float, ...] = Field(
        default=(0.5, 0.75, 1.0), min_length=1, description="Scales α of each diff: the starts are M_i + α·Δ (and M_i)."
    )
    examples: int = Field(
        default=100,
        ge=1,
        description="Held-out fine-tuning examples (heldout_loss, short_finetune) or probe documents.",
    )
    steps_fraction: float = Field(
        default=0.05, gt=0, le=1, description="short_finetune: the recipe's steps each start trains per halving round."
    )
    score_by: ProbeScore = Field(
        default=ProbeScore.HELDOUT_LOSS, description="short_finetune: what ranks the starts after each round."
    )
    confidence: float | None = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="zero_shot: a recycled start is chosen over the plain release only when it scores higher on the "
        "probe's documents with this confidence (one-sided paired bootstrap, and exact McNemar for 0/1 scores); null: "
        "the highest score wins.",
    )

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [a for a in value if not 0 < a <= 2]
        if bad:
            raise ValueError(f"alphas {bad} are out of range: each α must be in (0, 2], e.g. [0.5, 0.75, 1.0]")
        if len(set(value)) != len(value):
            raise ValueError(f"alphas {list(value)} repeat a value; list each α once")
        return value
