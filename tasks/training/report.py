"""What a fine-tune leaves beside its model (`finetune.json`): the loss by step, the input tokens seen, where it
ran and when. A light model, so that whoever reads a run back (the flow's record step, a launched run's parent)
reads it as itself, without the training stack."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ...fs import write_text_atomic

FINETUNE_REPORT = "finetune.json"
"""The report's name in a run's working folder."""


class FinetuneReport(BaseModel):
    """One fine-tune run, as its report file holds it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: Path
    loss_curve: tuple[tuple[int, float], ...]
    seconds: float
    tokens: int
    device: str
    processes: int
    started_at: datetime
    finished_at: datetime

    @property
    def tokens_per_second(self) -> float:
        """Training throughput over the whole run (0 for a run of no time)."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def final_loss(self) -> float | None:
        """The loss of the last step (None: no steps)."""
        return self.loss_curve[-1][1] if self.loss_curve else None

    def write(self, path: Path) -> None:
        """Write the report to `path` atomically."""
        write_text_atomic(path, self.model_dump_json())

    @classmethod
    def read(cls, path: Path) -> FinetuneReport:
        """The report at `path`.

        Raises:
            OSError: it cannot be read. pydantic.ValidationError: it is not a fine-tune report.
        """
        return cls.model_validate_json(Path(path).read_text())
