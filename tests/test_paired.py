"""Paired evidence for the gate: the bootstrap CI, exact McNemar, and what the unpaired z-test misses."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import pytest

import graftwork.tasks.paired as paired
from graftwork.tasks.paired import PairedDiff, paired_difference
from tests.unpaired import unpaired_z

N = 400
Pair = Callable[[], tuple[Mapping[Hashable, float], Mapping[Hashable, float]]]


def close_pair() -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
    """400 items: both right on 360, both wrong on 22, a alone right on 16, b alone right on 2."""
    a = [1.0] * 360 + [0.0] * 22 + [1.0] * 16 + [0.0] * 2
    b = [1.0] * 360 + [0.0] * 22 + [0.0] * 16 + [1.0] * 2
    return {("none", i): x for i, x in enumerate(a)}, {("none", i): x for i, x in enumerate(b)}


def continuous_pair(n: int = 101) -> tuple[dict[int, float], dict[int, float]]:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.6, 0.2, n), rng.normal(0.5, 0.2, n)
    return dict(enumerate(a.tolist())), dict(enumerate(b.tolist()))


def test_identical_scores_differ_by_nothing() -> None:
    scores = {i: float(i % 3 == 0) for i in range(200)}
    result = paired_difference(a=scores, b=dict(scores))
    assert (result.diff, result.low, result.high, result.lower_bound) == (0, 0, 0, 0)
    assert (result.mcnemar_p, result.disagree, result.only_a, result.only_b, result.examples) == (1.0, 0, 0, 0, ())
    assert (result.n, result.a_mean, result.b_mean) == (200, 67 / 200, 67 / 200)


def test_the_paired_tests_tell_apart_what_the_unpaired_one_does_not() -> None:
    a, b = close_pair()
    result = paired_difference(a=a, b=b)
    assert (result.only_a, result.only_b, result.disagree) == (16, 2, 18)
    assert result.diff == 14 / N
    assert (result.a_mean, result.b_mean) == (376 / N, 362 / N)
    assert result.mcnemar_p == 2 * (1 + 18 + 153) / 2**18
    assert result.mcnemar_p < 0.01
    assert result.lower_bound > 0
    assert result.low <= result.lower_bound <= result.diff <= result.high
    assert result.examples == (("none", 382), ("none", 383), ("none", 384))

    def stderr(p: float) -> float:
        return math.sqrt(p * (1 - p) / (N - 1))

    a_se, b_se = stderr(result.a_mean), stderr(result.b_mean)
    assert 0.05 < unpaired_z(a_mean=result.a_mean, a_stderr=a_se, b_mean=result.b_mean, b_stderr=b_se) < 0.1


@pytest.mark.parametrize("pair", [close_pair, continuous_pair])
def test_the_bounds_are_ordered(pair: Pair) -> None:
    a, b = pair()
    result = paired_difference(a=a, b=b, confidence=0.95)
    assert result.low <= result.lower_bound <= result.diff <= result.high
    assert result.low < result.high


def test_a_seed_gives_one_result_and_another_seed_another() -> None:
    a, b = continuous_pair()
    first = paired_difference(a=a, b=b, seed=1)
    assert paired_difference(a=dict(reversed(a.items())), b=b, seed=1) == first
    assert first.mcnemar_p is None and (first.seed, first.resamples) == (1, 10_000)
    assert paired_difference(a=a, b=b, seed=2).low != first.low


@pytest.mark.parametrize("pair", [close_pair, continuous_pair])
def test_the_chunk_size_does_not_change_the_result(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair()
    whole = paired_difference(a=a, b=b, resamples=999)
    for chunk in (1, 7, 3 * len(a) + 5):
        monkeypatch.setattr(paired, "CHUNK", chunk)
        assert paired_difference(a=a, b=b, resamples=999) == whole


@pytest.mark.parametrize("few", [1, 10**9])
def test_counts_and_indices_draw_the_same_distribution(few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paired, "FEW", few)  # 1: resample counts of values; 10**9: resample indices
    a, b = close_pair()
    result = paired_difference(a=a, b=b, resamples=20_000)
    assert result.low == pytest.approx(0.015, abs=0.003)
    assert result.high == pytest.approx(0.055, abs=0.003)


@pytest.mark.parametrize(("wins", "losses", "p"), [(5, 0, 2 / 32), (0, 5, 2 / 32), (3, 2, 1.0), (1, 0, 1.0)])
def test_mcnemar_is_exact(wins: int, losses: int, p: float) -> None:
    a = {i: 1.0 for i in range(wins)} | {wins + i: 0.0 for i in range(losses)}
    b = {i: 0.0 for i in range(wins)} | {wins + i: 1.0 for i in range(losses)}
    assert paired_difference(a=a, b=b).mcnemar_p == p


def test_mcnemar_does_not_overflow_on_many_disagreements() -> None:
    a = {i: float(i < 50_200) for i in range(100_000)}
    b = {i: 1 - x for i, x in a.items()}
    result = paired_difference(a=a, b=b, resamples=1)
    assert (result.only_a, result.only_b) == (50_200, 49_800)
    normal = math.erfc((400 - 1) / math.sqrt(100_000) / math.sqrt(2))  # with continuity correction
    assert result.mcnemar_p == pytest.approx(normal, abs=0.002)


def test_examples_come_in_document_order() -> None:
    a = {("add", "none", doc): 1.0 for doc in (1, 2, 10, 100)}
    b = {("add", "none", doc): 0.0 for doc in (1, 2, 10, 100)}
    assert paired_difference(a=a, b=b, examples=3).examples == (
        ("add", "none", 1),
        ("add", "none", 2),
        ("add", "none", 10),
    )


def test_mismatched_keys_are_refused_naming_the_counts() -> None:
    a, b = close_pair()
    del b[("none", 7)], b[("none", 8)]
    missing = r"a has 400 and b has 398; 2 only in a \(e\.g\. \[\('none', 7\), \('none', 8\)\]\), 0 only in b"
    with pytest.raises(ValueError, match=missing):
        paired_difference(a=a, b=b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"a": {}, "b": {}}, "no samples"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"resamples": 0}, "resamples"),
        ({"examples": -1}, "examples"),
        ({"a": {0: math.nan}, "b": {0: 1.0}}, "finite"),
    ],
)
def test_bad_input_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_difference(**({"a": {0: 1.0}, "b": {0: 0.0}} | kwargs))


def test_unpaired_z() -> None:
    assert unpaired_z(a_mean=0.5, a_stderr=0.0, b_mean=0.5, b_stderr=0.0) == 1.0
    assert unpaired_z(a_mean=0.6, a_stderr=0.0, b_mean=0.5, b_stderr=0.0) == 0.0
    p = unpaired_z(a_mean=0.5 + 1.96 * 0.05, a_stderr=0.03, b_mean=0.5, b_stderr=0.04)  # z = 1.96
    assert p == pytest.approx(0.05, abs=1e-4)
    with pytest.raises(ValueError, match="at least 0"):
        unpaired_z(a_mean=0.5, a_stderr=-0.1, b_mean=0.5, b_stderr=0.0)


def test_a_paired_diff_is_plain_data() -> None:
    a, b = close_pair()
    result = paired_difference(a=a, b=b, resamples=10)
    assert isinstance(result, PairedDiff)
    assert all(type(getattr(result, f)) is float for f in ("a_mean", "b_mean", "diff", "low", "high", "lower_bound"))
