"""The engine's arithmetic: one fused pass per chunk, compiled by numba, on the bits of the safetensors dtypes.

A chunk's values are decoded from their stored bits to float64, combined (`t + α·(f − b)`, `t + α·Δ`, `f − b`)
and rounded once to the output's dtype, element by element, in one loop over the chunk: no intermediate array, so
the data crosses memory once. The chunk is cut into one block per thread numba is given (all cores but one, see
`stream`), and each block's loop is branch-free where it matters, so that LLVM vectorizes it. A kernel says
whether some result is not finite as a flag (a count would cost a third of the loop), found by one comparison
per element: |x| < the smallest magnitude that rounds to ±Inf in the output's dtype is false for NaN, ±Inf and
every x that overflows.

Arrays carry their dtype in their numpy type (`tasks.io.stfile.ARRAY_DTYPES`): bf16 as uint16 bits, fp16 as
int16 bits, float32 and float64 as themselves. Each kernel is compiled once per combination of input and output
types (and cached on disk by numba, so a later process loads it).

Rounding to bf16 and fp16 is correct rounding to nearest, ties to even, done once: the float64 value is rounded
to float32 *to odd* (truncated, with the last bit set when anything was cut off), then to the 16-bit type to
nearest even. With at least two more bits in float32 than in the 16-bit type, the two steps are one correct
rounding (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to
odd", 2008); converting float64 to float32 to nearest and then to the 16-bit type, as torch does, rounds twice
and is off by one unit in the last place about once in a thousand random values.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import overload


def _compiled(*, parallel: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """numba's `njit` (releasing the GIL) with its disk cache, or without it where numba finds no folder it may
    write (the package's `__pycache__` and `~/.cache/numba` both read-only, `NUMBA_CACHE_DIR` unset): then a process
    compiles each kernel it uses anew (1-2 s) instead of failing to import the engine."""

    def decorate(func: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, nogil=True, parallel=parallel)(func)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return njit(nogil=True, parallel=parallel)(func)

    return decorate


def decode(v):
    """float64 value of one stored element (compiled per dtype by the overload below)."""
    raise NotImplementedError("only callable from numba-compiled code")


def store(out, i, x):
    """out[i] ← x rounded once to out's dtype."""
    raise NotImplementedError("only callable from numba-compiled code")


def overflow(out):
    """The smallest magnitude that rounds to ±Inf in out's dtype."""
    raise NotImplementedError("only callable from numba-compiled code")


def same_bits(a, i, x):
    """Whether x rounded once to a's dtype has the bits of a[i]."""
    raise NotImplementedError("only callable from numba-compiled code")


@njit
def _bf16_value(h):
    return np.float64(np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32))


@njit
def _fp16_value(h):
    u = np.uint32(np.uint16(h))
    sign = np.uint32(u & np.uint32(0x8000)) << np.uint32(16)
    e = (u >> np.uint32(10)) & np.uint32(0x1F)
    m = u & np.uint32(0x3FF)
    if e == 0:
        x = np.float64(m) * 2.0**-24
        return -x if sign else x
    if e == 31:
        bits = sign | np.uint32(0x7F800000) | (m << np.uint32(13))
    else:
        bits = sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))
    return np.float64(np.uint32(bits).view(np.float32))


@njit
def _to_odd_f32(x):
    """Bits of x rounded to float32 to odd: rounded to nearest, moved one step toward zero when that went away
    from zero, and the last bit set when the result is inexact (NaN stays NaN; past the float32 range, the largest
    finite value, odd)."""
    y = np.float32(x)
    back = np.float64(y)
    inexact = np.uint32(back != x)
    outward = np.uint32(abs(back) > abs(x))
    return (y.view(np.uint32) - (inexact & outward)) | inexact


@njit
def _bf16_bits(x):
    u = _to_odd_f32(x)
    nearest = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    special = (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000)  # Inf and NaN keep their top bits
    return np.uint16(u >> np.uint32(16)) if special else np.uint16(nearest)


@njit
def _fp16_bits(x):
    u = _to_odd_f32(x)
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):
        h = sign | np.uint32(0x7E00)
    elif a >= np.uint32(0x477FF000):  # at least halfway from 65504 to 65536: overflows to Inf
        h = sign | np.uint32(0x7C00)
    elif a >= np.uint32(0x38800000):  # normal in fp16
        r = a - np.uint32(0x38000000)
        h = sign | ((r + np.uint32(0x0FFF) + ((r >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13))
    else:  # subnormal in fp16, or zero
        e = a >> np.uint32(23)
        s = np.uint32(126) - e
        if e == 0 or s > np.uint32(24):
            h = sign
        else:
            m = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
            q = m >> s
            rest = m & ((np.uint32(1) << s) - np.uint32(1))
            half = np.uint32(1) << (s - np.uint32(1))
            if rest > half or (rest == half and (q & np.uint32(1))):
                q += np.uint32(1)
            h = sign | q
    return np.int16(np.uint16(h))


@overload(decode)
def _decode(v):
    if v == types.uint16:
        return lambda v: _bf16_value(v)
    if v == types.int16:
        return lambda v: _fp16_value(v)
    if v in (types.float32, types.float64):
        return lambda v: np.float64(v)
    return None


@overload(store)
def _store(out, i, x):
    dtype = out.dtype
    if dtype == types.uint16:

        def bf16(out, i, x):
            out[i] = _bf16_bits(x)

        return bf16
    if dtype == types.int16:

        def fp16(out, i, x):
            out[i] = _fp16_bits(x)

        return fp16
    if dtype in (types.float32, types.float64):

        def native(out, i, x):
            out[i] = x  # numba converts float64 to float32 to nearest, ties to even

        return native
    return None


_OVERFLOW = {
    types.uint16: (2 - 2.0**-8) * 2.0**127,
    types.int16: 65520.0,
    types.float32: (2 - 2.0**-24) * 2.0**127,
    types.float64: np.inf,
}


@overload(overflow)
def _overflow(out):
    limit = _OVERFLOW.get(out.dtype)
    if limit is None:
        return None
    return lambda out: limit


@overload(same_bits)
def _same_bits(a, i, x):
    dtype = a.dtype
    if dtype == types.uint16:
        return lambda a, i, x: _bf16_bits(x) == a[i]
    if dtype == types.int16:
        return lambda a, i, x: _fp16_bits(x) == a[i]
    if dtype == types.float32:
        return lambda a, i, x: np.float32(x).view(np.uint32) == np.float32(a[i]).view(np.uint32)
    if dtype == types.float64:
        return lambda a, i, x: np.float64(x).view(np.uint64) == np.float64(a[i]).view(np.uint64)
    return None


# numba's parallel kernels may not be entered from two threads at once when it runs on its own thread pool
# ("workqueue", where no OpenMP or TBB library is installed: a slim image); the engine's operations may run in
# threads of one process (a flow's tasks), so the parallel kernels take turns.
_PARALLEL = threading.Lock()


def _same_size(out: np.ndarray, *inputs: np.ndarray) -> None:
    if any(a.size != out.size for a in inputs):
        sizes = ", ".join(str(a.size) for a in inputs)
        raise ValueError(f"a kernel's inputs ({sizes} elements) and output ({out.size}) must be of one size")


def _blocks(n: int) -> tuple[int, int]:
    """One block of a chunk of n elements per thread numba is given now: their count and length (the count is
    worked out here, not in compiled code, where reading it would keep numba from caching the kernel). Each block
    is a slice that its loop indexes from 0: with an index numba cannot prove non-negative, every access checks
    for wraparound and the loop is not vectorized (3x slower)."""
    parts = max(1, min(get_num_threads(), n // 4096))
    return parts, (n + parts - 1) // parts


@njit
def _shift_block(t, f, b, alpha, out):
    limit = overflow(out)
    bad = False
    if alpha == 1.0:
        for i in range(out.size):
            x = decode(t[i]) + (decode(f[i]) - decode(b[i]))
            store(out, i, x)
            bad |= not abs(x) < limit
    else:
        for i in range(out.size):
            x = decode(t[i]) + (decode(f[i]) - decode(b[i])) * alpha
            store(out, i, x)
            bad |= not abs(x) < limit
    return bad


@njit
def _apply_block(t, delta, alpha, out):
    limit = overflow(out)
    bad = False
    if alpha == 1.0:
        for i in range(out.size):
            x = decode(t[i]) + decode(delta[i])
            store(out, i, x)
            bad |= not abs(x) < limit
    else:
        for i in range(out.size):
            x = decode(t[i]) + decode(delta[i]) * alpha
            store(out, i, x)
            bad |= not abs(x) < limit
    return bad


def transfer(t: np.ndarray, f: np.ndarray, b: np.ndarray, alpha: float, out: np.ndarray) -> bool:
    """out ← round(t + alpha·(f − b)), computed in float64 and rounded once; returns whether some result is not
    finite. With alpha 1, Δ is not multiplied (x·1 is x: a loop without the multiply is about 5 % faster).

    Raises:
        ValueError: the arrays are not all of one size (the compiled loop checks no bounds).
    """
    _same_size(out, t, f, b)
    with _PARALLEL:
        return bool(_transfer(t, f, b, alpha, out, *_blocks(out.size)))


def apply(t: np.ndarray, delta: np.ndarray, alpha: float, out: np.ndarray) -> bool:
    """out ← round(t + alpha·Δ), computed in float64 and rounded once; returns whether some result is not
    finite.

    Raises:
        ValueError: the arrays are not all of one size (the compiled loop checks no bounds).
    """
    _same_size(out, t, delta)
    with _PARALLEL:
        return bool(_apply(t, delta, alpha, out, *_blocks(out.size)))


def diff(f: np.ndarray, b: np.ndarray, out: np.ndarray) -> tuple[float, int, int]:
    """out ← f − b computed in float64 and rounded to out's dtype (a zero with f's sign where f equals b, so that
    b + Δ gives back a -0.0 of f's over a -0.0 of b's).

    Returns the sum of squares of the stored Δ (counted only where every element is exact and finite: otherwise
    the chunk is stored again in a wider dtype, or refused), how many elements are inexact (out's dtype
    overflows, or b + Δ rounded to f's dtype does not give back f's bits) and how many differences are not
    finite (an input is NaN or Inf, or float64 overflows).

    Raises:
        ValueError: the arrays are not all of one size (the compiled loop checks no bounds).
    """
    _same_size(out, f, b)
    with _PARALLEL:
        sumsq, inexact, bad = _diff(f, b, out, *_blocks(out.size))
    return float(sumsq), int(inexact), int(bad)


@_compiled(parallel=True)
def _transfer(t, f, b, alpha, out, parts, step):
    bad = np.zeros(parts, dtype=np.bool_)
    for p in prange(parts):
        lo, hi = p * step, min(out.size, (p + 1) * step)
        bad[p] = _shift_block(t[lo:hi], f[lo:hi], b[lo:hi], alpha, out[lo:hi])
    return bad.any()


@_compiled(parallel=True)
def _apply(t, delta, alpha, out, parts, step):
    bad = np.zeros(parts, dtype=np.bool_)
    for p in prange(parts):
        lo, hi = p * step, min(out.size, (p + 1) * step)
        bad[p] = _apply_block(t[lo:hi], delta[lo:hi], alpha, out[lo:hi])
    return bad.any()


@njit
def _diff_block(f, b, out):
    limit = overflow(out)
    inexact = 0
    bad = 0
    for i in range(out.size):
        base = decode(b[i])
        tuned = decode(f[i])
        d = tuned - base
        if d == 0.0:  # -0 - (-0) is +0, and -0 + +0 is +0: a zero Δ takes the fine-tuned value's sign
            d = math.copysign(0.0, tuned)
        store(out, i, d)
        finite = abs(d) < np.inf
        bad += not finite
        inexact += finite and not (abs(d) < limit and same_bits(f, i, base + decode(out[i])))
    return inexact, bad


@njit
def _sum_of_squares(a):
    """Σ a² in float64, in eight running sums (one would make each addition wait for the one before)."""
    sums = np.zeros(8)
    whole = a.size - a.size % 8
    for i in range(0, whole, 8):
        for k in range(8):
            x = decode(a[i + k])
            sums[k] += x * x
    total = 0.0
    for i in range(whole, a.size):
        x = decode(a[i])
        total += x * x
    return sums.sum() + total


@_compiled(parallel=True)
def _diff(f, b, out, parts, step):
    sums = np.zeros(parts)
    inexact = np.zeros(parts, dtype=np.int64)
    bad = np.zeros(parts, dtype=np.int64)
    for p in prange(parts):
        lo, hi = p * step, min(out.size, (p + 1) * step)
        inexact[p], bad[p] = _diff_block(f[lo:hi], b[lo:hi], out[lo:hi])
        if not inexact[p] and not bad[p]:
            sums[p] = _sum_of_squares(out[lo:hi])
    return sums.sum(), inexact.sum(), bad.sum()


@_compiled()
def convert(src, out):
    """out ← src rounded once to out's dtype; returns whether some result is not finite."""
    limit = overflow(out)
    bad = False
    for i in range(out.size):
        x = decode(src[i])
        store(out, i, x)
        bad |= not abs(x) < limit
    return bad


@_compiled()
def count_nonfinite(a):
    """How many elements of `a` are NaN or ±Inf."""
    bad = 0
    for i in range(a.size):
        if not np.isfinite(decode(a[i])):
            bad += 1
    return bad


@_compiled()
def widen(a, out):
    """out ← a's values as float64 (exact)."""
    for i in range(a.size):
        out[i] = decode(a[i])
