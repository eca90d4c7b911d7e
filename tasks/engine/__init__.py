"""The diff-vector engine: Δ = m' − m (`diff`), m_t + α·Δ (`apply`), and both in one pass (`transfer`).

float64 arithmetic rounded once to the output dtype, so `apply(diff(m', m), m)` gives m' back bit for
bit; inputs streamed chunk by chunk; vocabulary rows aligned by token; nothing written until the
inputs are checked, and every output renamed into place only when complete.
"""

from .operations import DeltaSummary, apply, diff, transfer

__all__ = ["DeltaSummary", "apply", "diff", "transfer"]
