"""The gate's paired evidence: a candidate against its champion, both scored on the same samples.

Pairing the two models' per-sample scores by key removes the between-sample noise that an unpaired
comparison of two means carries, so a real difference of a point or two shows up. This module gives
the paired percentile-bootstrap confidence interval of the mean difference, the exact McNemar test
for 0/1 metrics, and, for comparison, the unpaired z-test a gate that ignores pairing computes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads when a comparison is made: a track's config (which imports gate) does without it
    import numpy as np

# The most random numbers (indices or counts) drawn at once, which bounds the bootstrap's memory.
CHUNK = 2**22
# Differences with at most one distinct value per this many samples are resampled as counts of each value.
FEW = 16


@dataclass(frozen=True)
class PairedDiff:
    """Candidate (a) against champion (b) on one metric of one task, over the samples both were scored on."""

    n: int  # samples in both
    a_mean: float
    b_mean: float
    diff: float  # mean of a − b (a_mean − b_mean up to rounding)
    low: float  # two-sided percentile-bootstrap CI of diff at `confidence`
    high: float
    lower_bound: float  # one-sided lower confidence bound of diff at `confidence`: the (1 − confidence) quantile
    confidence: float
    resamples: int
    seed: int
    mcnemar_p: float | None  # exact two-sided McNemar p-value when every value is 0 or 1, else None
    disagree: int  # samples where a and b differ
    only_a: int  # samples where a > b (for 0/1 metrics: a right, b wrong)
    only_b: int  # samples where a < b (for 0/1 metrics: a wrong, b right)
    examples: tuple[Hashable, ...]  # the first keys where a and b differ, in key order


def paired_difference(
    *,
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    examples: int = 3,
) -> PairedDiff:
    """Compare per-sample scores `a` (candidate) and `b` (champion), aligned by key (e.g. `(filter, doc_id)`).

    The bootstrap resamples the n paired differences with replacement `resamples` times from
    `numpy.random.default_rng(seed)`; the same inputs and seed give the same result, whatever the
    order of the mappings.

    Raises:
        ValueError: the key sets of `a` and `b` differ (the message names the counts and a few
            missing keys), there are no samples, a value is not finite, `confidence` is not in
            (0, 1), `resamples` < 1 or `examples` < 0.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if examples < 0:
        raise ValueError(f"examples must be at least 0, not {examples}")
    if a.keys() != b.keys():
        only_in_a, only_in_b = _ordered(a.keys() - b.keys()), _ordered(b.keys() - a.keys())
        raise ValueError(
            f"a and b are not scored on the same samples: a has {len(a)} and b has {len(b)}; "
            f"{len(only_in_a)} only in a (e.g. {only_in_a[:3]}), {len(only_in_b)} only in b (e.g. {only_in_b[:3]})"
        )
    if not a:
        raise ValueError("a and b have no samples")
    import numpy as np

    keys = _ordered(a)
    n = len(keys)
    av = np.fromiter((a[k] for k in keys), dtype=float, count=n)
    bv = np.fromiter((b[k] for k in keys), dtype=float, count=n)
    if not (np.isfinite(av).all() and np.isfinite(bv).all()):
        raise ValueError("a and b must hold finite values")
    d = av - bv
    only_a, only_b = int((d > 0).sum()), int((d < 0).sum())
    binary = bool(np.isin(av, (0.0, 1.0)).all() and np.isin(bv, (0.0, 1.0)).all())
    means = _bootstrap_means(d, resamples=resamples, rng=np.random.default_rng(seed))
    low, lower_bound, high = np.quantile(means, [(1 - confidence) / 2, 1 - confidence, (1 + confidence) / 2])
    return PairedDiff(
        n=n,
        a_mean=math.fsum(av) / n,
        b_mean=math.fsum(bv) / n,
        diff=math.fsum(d) / n,
        low=float(low),
        high=float(high),
        lower_bound=float(lower_bound),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        mcnemar_p=_mcnemar(only_a, only_b) if binary else None,
        disagree=only_a + only_b,
        only_a=only_a,
        only_b=only_b,
        examples=tuple(k for k, di in zip(keys, d, strict=True) if di != 0)[:examples],
    )


def _ordered(keys: Iterable[Hashable]) -> list[Hashable]:
    """`keys` in their own order (document 2 before document 10) where they compare, else by `str`."""
    try:
        return sorted(keys)  # type: ignore[type-var]
    except TypeError:
        return sorted(keys, key=str)


def _bootstrap_means(d: np.ndarray, *, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The means of `resamples` resamples of `d` with replacement, drawn chunk by chunk in a fixed order.

    When `d` has few distinct values (0/1 metrics give at most three), each resample is drawn as the
    multinomial counts of the values, which has the distribution of n drawn indices at a fraction of the cost.
    """
    import numpy as np

    n = len(d)
    values, counts = np.unique(d, return_counts=True)
    few = len(values) * FEW <= n
    rows = max(1, CHUNK // (len(values) if few else n))
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        size = min(rows, resamples - start)
        if few:
            means[start : start + size] = rng.multinomial(n, counts / n, size=size) @ values / n
        else:
            means[start : start + size] = d[rng.integers(0, n, size=(size, n))].mean(axis=1)
    return means


def _mcnemar(b: int, c: int) -> float:
    """The exact two-sided McNemar p-value for `b` and `c` discordant pairs, in integer arithmetic."""
    total, tail, term = b + c, 0, 1
    for k in range(min(b, c) + 1):
        tail += term
        term = term * (total - k) // (k + 1)
    return min(1.0, 2 * tail / 2**total)
