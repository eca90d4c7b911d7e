"""The unpaired z-test, the comparison the paired rules replace: kept here to show what it cannot tell apart."""

from __future__ import annotations

import math


def unpaired_z(*, a_mean: float, a_stderr: float, b_mean: float, b_stderr: float) -> float:
    """The two-sided p-value of the unpaired z-test that two means, with their standard errors, are equal.

    It is 1.0 when both standard errors are 0 and the means are equal, and 0.0 when they are 0 and the means differ.

    Raises:
        ValueError: a standard error is negative (or NaN).
    """
    if not (a_stderr >= 0 and b_stderr >= 0):
        raise ValueError(f"standard errors must be at least 0, not {a_stderr} and {b_stderr}")
    spread = math.hypot(a_stderr, b_stderr)
    if spread == 0:
        return 1.0 if a_mean == b_mean else 0.0
    return math.erfc(abs(a_mean - b_mean) / spread / math.sqrt(2))
