"""The engine's fused kernel against the torch arithmetic it replaced, per element, in one run.

The engine computed round(t + α·(f − b)) on chunks with torch until issue 32: five passes over float64 buffers,
then torch's float64 → bfloat16 conversion, which goes through float32 and so rounds twice. The fused kernel
(`graftwork.tasks.engine.kernels.transfer`) is one numba loop per block of the chunk: decode the three bf16
inputs, compute in float64 as before, and round once, float64 → float32 rounding to odd, then float32 →
bfloat16 to nearest even (rounding to odd at 24 bits, then to nearest at 8, is one correct rounding).

    python benchmarks/bench_kernel.py [--elements 524288] [--repeat 200]

It prints ns per element for each at 1 and 2 threads, the ratio, whether the outputs agree on a Llama-like chunk
(weights ~N(0, 0.02), a small Δ), and, over random bf16 bits of every exponent, how often they differ and that the
fused kernel is the correctly rounded value wherever they do (checked with exact fractions). It also times what
each costs to start: `import torch` against `import numba` plus the first call of the cached kernel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction

import numba
import numpy as np
import torch

from graftwork.tasks.engine import kernels

FIRST_CALL = """import numpy as np
from graftwork.tasks.engine import kernels
a = np.zeros(8, np.uint16)
kernels.transfer(a, a, a, 1.0, a.copy())
"""


class TorchPeer:
    """The arithmetic the engine had before: Δ into reused float64 buffers, then round(t + α·Δ) with torch."""

    def __init__(self) -> None:
        self._x = self._y = torch.empty(0, dtype=torch.float64)

    def __call__(self, t: np.ndarray, f: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
        if self._x.numel() < t.size:
            self._x, self._y = torch.empty(t.size, dtype=torch.float64), torch.empty(t.size, dtype=torch.float64)
        x, y = self._x[: t.size], self._y[: t.size]
        x.copy_(_as_torch(f))
        y.copy_(_as_torch(b))
        x.sub_(y)
        if alpha != 1.0:
            x.mul_(alpha)
        y.copy_(_as_torch(t))
        x.add_(y)
        out = torch.empty(t.size, dtype=torch.bfloat16)
        out.copy_(x)
        return out.view(torch.int16).numpy().view(np.uint16)


PEER = TorchPeer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=1 << 19, help="elements per chunk (the engine's: 2^19)")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.elements
    weights = (rng.standard_normal(n) * 0.02).astype(np.float32)
    tuned = weights + (rng.standard_normal(n) * 1e-3).astype(np.float32)
    target = weights + (rng.standard_normal(n) * 1e-2).astype(np.float32)
    f, b, t = (_bf16_bits(a) for a in (tuned, weights, target))
    out = np.empty(n, dtype=np.uint16)
    print(f"chunk of {n} bf16 elements, best of {args.repeat} calls; ns per element:")
    print("| threads | torch (before) | fused (numba) | torch ÷ numba |")
    print("| --- | --- | --- | --- |")
    for threads in (1, 2):
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
        fused = _best(lambda: kernels.transfer(t, f, b, 1.0, out), args.repeat) / n * 1e9
        today = _best(lambda: PEER(t, f, b, 1.0), args.repeat) / n * 1e9
        print(f"| {threads} | {today:.2f} | {fused:.2f} | {today / fused:.2f} |")
    print(f"Llama-like chunk: outputs equal bit for bit: {np.array_equal(PEER(t, f, b, 1.0), out)}")
    _rounding(rng)
    print(f"start: import torch {_start('import torch'):.2f} s; import numba and the first call of the cached "
          f"kernel {_start(FIRST_CALL):.2f} s")  # fmt: skip


def _rounding(rng: np.random.Generator) -> None:
    """Random finite bf16 bits of every exponent: where the two differ, the fused kernel's is the correctly rounded
    value (and torch's is not); on a sample of the rest, both are."""
    n = 1 << 20
    bits = [_finite(rng.integers(0, 1 << 16, 2 * n, dtype=np.uint32).astype(np.uint16))[:n] for _ in range(3)]
    t, f, b = bits
    for alpha in (1.0, 0.5, 0.7):
        out = np.empty(n, dtype=np.uint16)
        kernels.transfer(t, f, b, alpha, out)
        today = PEER(t, f, b, alpha)
        exact = _as_torch(t).double() + (_as_torch(f).double() - _as_torch(b).double()) * alpha
        finite = np.isfinite(exact.numpy()) & (np.abs(exact.numpy()) < 3.3e38)
        differ = np.nonzero((today != out) & finite)[0]
        sample = rng.choice(np.nonzero(finite)[0], 2000, replace=False)
        right = all(_correct(float(exact[i]), int(out[i])) for i in [*differ, *sample])
        wrong_today = sum(not _correct(float(exact[i]), int(today[i])) for i in differ)
        print(f"α {alpha}: {len(differ)} of {int(finite.sum())} finite results differ; the fused kernel is correctly "
              f"rounded at all of them and at 2000 others: {right}; torch's is not at {wrong_today}")  # fmt: skip


def _correct(x: float, bits: int) -> bool:
    """Whether the bf16 `bits` are x rounded to the nearest bf16, ties to even (exact fractions)."""
    exact, value = Fraction(x), Fraction(_value(bits))
    gap = abs(value - exact)
    for step in (-1, 1):
        near = (bits + step) & 0xFFFF
        if not np.isfinite(_value(near)):
            continue
        other = abs(Fraction(_value(near)) - exact)
        if other < gap or (other == gap and near % 2 == 0 and bits % 2 == 1):
            return False
    return True


def _value(bits: int) -> float:
    return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def _as_torch(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)


def _finite(bits: np.ndarray) -> np.ndarray:
    return bits[np.isfinite((bits.astype(np.uint32) << 16).view(np.float32))]


def _best(call: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def _start(code: str) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
