"""The float64 reference rounded once to bf16, fp16 and float32, with numpy's own correctly rounded steps only: a
float64 x is scaled by a power of two (exact) to the units of its last place in the output dtype, rounded to the
nearest integer, ties to even (`np.rint`), and scaled back (exact). The engine's guarantee is this value, bit for
bit; torch's float64 → bf16/fp16 conversion goes through float32 and so rounds twice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Format:
    """An output dtype: the numpy type its bits are held in, significand bits, smallest quantum, largest finite."""

    name: str
    array: type[np.generic]
    digits: int
    tiny: float
    largest: float


BF16 = Format("bf16", np.uint16, 8, 2.0**-133, (2 - 2.0**-7) * 2.0**127)
FP16 = Format("fp16", np.int16, 11, 2.0**-24, 65504.0)
FP32 = Format("fp32", np.float32, 24, 2.0**-149, float(np.finfo(np.float32).max))
FORMATS = {f.name: f for f in (BF16, FP16, FP32)}


def values(fmt: Format, bits: np.ndarray) -> np.ndarray:
    """float64 values of stored elements."""
    with np.errstate(invalid="ignore"):
        if fmt is BF16:
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if fmt is FP16:
            return bits.view(np.float16).astype(np.float64)
        return bits.astype(np.float64)


def round_once(fmt: Format, x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest value of `fmt`, ties to even, as float64 (±inf past the largest finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        _, exponent = np.frexp(x)
        quantum = np.maximum(np.ldexp(1.0, exponent - fmt.digits), fmt.tiny)
        rounded = np.rint(x / quantum) * quantum
    return np.where(np.abs(rounded) > fmt.largest, np.copysign(np.inf, x), rounded)


def stored(fmt: Format, x: np.ndarray) -> np.ndarray:
    """The bits of float64 values that `fmt` holds exactly (±inf past its range)."""
    with np.errstate(over="ignore"):
        if fmt is BF16:
            return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        if fmt is FP16:
            return x.astype(np.float16).view(np.int16)
        return x.astype(fmt.array)
