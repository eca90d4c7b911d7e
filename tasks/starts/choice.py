"""What `recycle.mode: auto` found and chose, as typed records: the pre-check's figures (`Precheck`), each start's
probe score (`ProbeResult`), the name of a start (`Start`: the plain release, or a role of Δ at an α), and the
record a candidate keeps of it all (`StartRecord`, the `candidates.start_choice` JSON column). Pydantic only:
the CLI reads a candidate's record without the training stack."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ...errors import FinetuneConfigError
from .spec import ProbeKind

PLAIN = "plain"


@dataclass(frozen=True)
class Start:
    """A start by name: the plain release (`role` None), or M_i + α·Δ of the Δ playing `role` (`iterative@0.5`)."""

    role: str | None
    alpha: float = 0.0

    @classmethod
    def named(cls, name: str) -> Start:
        """The start a name says (`plain`, `ROLE@ALPHA`).

        Raises:
            FinetuneConfigError: the name is neither.
        """
        if name == PLAIN:
            return cls(None)
        role, at, alpha = name.partition("@")
        try:
            value = float(alpha)
        except ValueError:
            value = math.nan
        if not (role and at and math.isfinite(value)):
            raise FinetuneConfigError(
                f"start {name!r} is neither {PLAIN!r} nor ROLE@ALPHA (e.g. iterative@0.75).", field="start"
            )
        return cls(role, value)

    @property
    def name(self) -> str:
        """`plain`, or `ROLE@ALPHA` (a folder name too)."""
        return PLAIN if self.role is None else f"{self.role}@{self.alpha:g}"


class Shift(BaseModel):
    """How far the base moved in one group of tensors (or overall), against the previous base and Δ."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)

    tensors: int = Field(description="Tensors in the group.")
    base_shift: float = Field(description="‖M_i − M_{i−1}‖ / ‖M_{i−1}‖: the base's move, relative to the old base.")
    shift_to_diff: float = Field(description="‖M_i − M_{i−1}‖ / ‖Δ‖: the base's move in units of the diff.")
    cosine: float = Field(description="cos(Δ, M_i − M_{i−1}); 0 where either is zero.")


class Precheck(BaseModel):
    """The transferability pre-check of one diff onto one new release (`tasks.starts.precheck`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)

    previous_base: str = Field(description="The release the diff was fine-tuned from, M_{i−1}.")
    base: str = Field(description="The new release, M_i.")
    diff: str = Field(description="The diff folder, Δ_{i−1}.")
    overall: Shift = Field(description="Every tensor together.")
    groups: dict[str, Shift] = Field(description="By layer type (see `precheck.group_of`).")
    threshold: float = Field(description="The overall base_shift above which the lineage counts as broken.")
    lineage_broken: bool = Field(description="The new release is not a continuation of the previous one.")
    reason: str = Field(description="The verdict in words, with the figures.")


class StartScore(BaseModel):
    """One start's probe outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)

    path: str = Field(description="The start's model folder.")
    score: float = Field(description="Higher is better: the probe suite's score, or minus the held-out loss.")
    curve: tuple[tuple[int, float], ...] = Field(
        default=(), description="short_finetune: (probe steps trained, score) after each round it took part in."
    )
    rounds: int = Field(default=0, description="short_finetune: halving rounds the start took part in.")


class PlainCheck(BaseModel):
    """The best-scoring recycled start against the plain release on the probe's documents, paired."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    start: str = Field(description="The recycled start that scored best.")
    diff: float = Field(description="Its mean score minus the plain release's, over the probe's documents.")
    lower_bound: float = Field(description="The one-sided lower confidence bound of `diff`.")
    confidence: float
    resamples: int
    n: int = Field(description="Probe documents both were scored on.")
    p_value: float | None = Field(
        description="0/1 scores: the exact one-sided McNemar p-value that `start` is no better than plain."
    )
    kept: bool = Field(
        description="Whether `start` was chosen rather than the plain release: lower_bound > 0 and, for 0/1 scores, "
        "p_value < 1 − confidence."
    )


class ProbeResult(BaseModel):
    """The probe's scores of every start, the start chosen, and what the probe cost."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)

    kind: ProbeKind
    scores: dict[str, StartScore]
    chosen: str = Field(description="The start to fine-tune from with the full recipe.")
    probe_steps: int = Field(description="Optimizer steps the probe trained, over all starts.")
    evaluations: int = Field(description="Scorings run (one per start, per round for short_finetune).")
    full_steps: int = Field(description="The full recipe's steps, for scale.")
    seconds: float = Field(description="Wall time of the probe.")
    versus_plain: PlainCheck | None = Field(
        default=None, description="zero_shot with a confidence: the best recycled start's paired check against plain."
    )

    @property
    def steps_fraction(self) -> float:
        """Probe steps as a fraction of one full fine-tune."""
        return self.probe_steps / self.full_steps if self.full_steps else 0.0


class StartRecord(BaseModel):
    """What `auto` found and chose for one release: kept with its candidate (`candidates.start_choice`) and in
    the run's folder, so that a resumed run chooses nothing again."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)

    diffs: dict[str, str] = Field(description="Why each Δ tried was the one its role carries, by role.")
    diff_ids: dict[str, str] = Field(default_factory=dict, description="The Δ tried by role (diff-N).")
    precheck: Precheck | None = Field(default=None, description="The pre-check of Δ^iter onto the release.")
    probe: ProbeResult | None = Field(default=None, description="Every start's probe score.")
    chosen: str = Field(description="The start fine-tuned from (`Start.named`).")
    why: str = Field(description="Why that one, in words.")

    @property
    def start(self) -> Start:
        """The chosen start.

        Raises:
            FinetuneConfigError: the record names no start (a record written by hand).
        """
        return Start.named(self.chosen)
