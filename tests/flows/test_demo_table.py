"""The demo's table prints scores as percentages with one decimal: one sum right in 200 is 0.5, not 0.01."""

from __future__ import annotations

from graftwork.deployments.demo_table import HEADER, ReleaseRow, line


def test_a_row_prints_percentages_that_do_not_round_half_a_point_away() -> None:
    row = ReleaseRow(
        release="M2", base=0.005, transferred=0.015, candidate=0.39, plain=0.07, plain_steps_to_transfer=10,
        decision="promote", reason="pass: no champion yet on this channel",
    )  # fmt: skip
    assert HEADER == "release    base  base+Δ  FT(base+Δ)  plain FT  gate"
    assert line(row) == "M2          0.5     1.5        39.0       7.0  promote: no champion yet on this channel"
    first = ReleaseRow(release="M1", base=0.0, transferred=None, candidate=1.0, plain=0.0,
                       plain_steps_to_transfer=None, decision="reject", reason="fail: below base")  # fmt: skip
    assert line(first) == "M1          0.0       —       100.0       0.0  reject: below base"
