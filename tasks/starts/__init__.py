"""Where a release's fine-tune starts, for `recycle.mode: auto`: the transferability pre-check of a diff onto
a new release (`precheck`), the candidate starts (`make_starts`), the probes that score them and the choice
(`Probe`, `score_starts`), and the probe data kept apart from the gate's (`split`)."""

from .make import PLAIN, make_starts, start_name
from .precheck import BROKEN_SHIFT, Precheck, Shift, precheck
from .probes import PlainCheck, Probe, ProbeResult, StartScore, choose, choose_over_plain, heldout_loss, score_starts
from .split import heldout_split, write_probe_task

__all__ = [
    "BROKEN_SHIFT",
    "PLAIN",
    "PlainCheck",
    "Precheck",
    "Probe",
    "ProbeResult",
    "Shift",
    "StartScore",
    "choose",
    "choose_over_plain",
    "heldout_loss",
    "heldout_split",
    "make_starts",
    "precheck",
    "score_starts",
    "start_name",
    "write_probe_task",
]
