"""The fused kernels against the float64 reference rounded once (`tests/rounding.py`), bit for bit, over random bits
of every exponent. torch's float64 → bf16 conversion is not such a reference: it goes through float32 and so rounds
twice (a test below shows an element where it is off)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graftwork.tasks.engine import kernels
from tests.rounding import BF16, FORMATS, FP16, FP32, Format, round_once, stored, values
from tests.service import child_env

N = 1 << 16


def random_elements(fmt: Format, rng: np.random.Generator) -> np.ndarray:
    """Random finite bits of every exponent, with ±0, subnormals, the largest finite values and exact ties mixed in."""
    width = np.dtype(fmt.array).itemsize * 8
    raw = rng.integers(0, 1 << width, 4 * N, dtype=np.uint64).astype(f"uint{width}").view(fmt.array)
    raw = raw[np.isfinite(values(fmt, raw))][:N].copy()
    specials = [0.0, -0.0, fmt.tiny, -fmt.tiny, fmt.largest, -fmt.largest, 1.0, -1.0]
    raw[: len(specials)] = stored(fmt, np.array(specials))
    return raw


def tie_inputs(fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t, f and b (f and b in float64) whose exact t + (f − b) lies on, or a hair beside, a tie of `fmt`.

    1 + 2^-digits is halfway between 1 and the next value (to even: 1); 1 + 3·2^-digits halfway between the next
    two (to even: up). A hair of 2^-40 above a tie rounds up; a float32 conversion first loses the hair and lands
    on the tie, so rounding twice goes down.
    """
    half = 2.0**-fmt.digits
    offsets = np.array([half, 3 * half, half + 2.0**-40, -half, -half - 2.0**-40, half * 2.0**-126])
    t = stored(fmt, np.ones(len(offsets)))
    return t, offsets, np.zeros(len(offsets))


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("alpha", [1.0, 0.37, -1.0, 0.5])
def test_transfer_is_the_float64_value_rounded_once(fmt: Format, alpha: float) -> None:
    rng = np.random.default_rng([ord(c) for c in fmt.name] + [int(alpha * 100) % 256])
    t, f, b = (random_elements(fmt, rng) for _ in range(3))
    t[-1], f[-1], b[-1] = stored(fmt, np.array([1, np.sign(alpha), -np.sign(alpha)]) * fmt.largest)  # overflows
    out = np.empty_like(t)
    bad = kernels.transfer(t, f, b, alpha, out)
    d = values(fmt, f) - values(fmt, b)
    x = values(fmt, t) + (d * alpha if alpha != 1.0 else d)
    want = round_once(fmt, x)
    finite = np.isfinite(want)
    assert bad and kernels.count_nonfinite(out) == int((~finite).sum()) > 0  # the overflows are stored as ±Inf
    assert np.array_equal(out[finite], stored(fmt, want[finite]))
    assert np.signbit(values(fmt, out[finite])).tolist() == np.signbit(want[finite]).tolist()


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_ties_and_near_ties_round_once(fmt: Format) -> None:
    t, f, b = tie_inputs(fmt)
    out = np.empty_like(t)
    assert not kernels.transfer(t, f, b, 1.0, out)
    want = round_once(fmt, values(fmt, t) + (f - b))
    assert np.array_equal(out, stored(fmt, want))
    assert values(fmt, out)[:3].tolist() == [1.0, 1.0 + 4 * 2.0**-fmt.digits, 1.0 + 2 * 2.0**-fmt.digits]


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_apply_with_a_float64_delta_rounds_once(fmt: Format) -> None:
    rng = np.random.default_rng(7)
    t = random_elements(fmt, rng)
    delta = rng.standard_normal(N) * np.exp2(rng.integers(-150, 130, N).astype(np.float64))
    out = np.empty_like(t)
    bad = kernels.apply(t, delta, 0.37, out)
    want = round_once(fmt, values(fmt, t) + delta * 0.37)
    finite = np.isfinite(want)
    assert bad and kernels.count_nonfinite(out) == int((~finite).sum()) > 0
    assert np.array_equal(out[finite], stored(fmt, want[finite]))


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_convert_rounds_float64_once_and_counts_overflow(fmt: Format) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(N) * np.exp2(rng.integers(-160, 140, N).astype(np.float64))
    out = np.empty(N, dtype=fmt.array)
    bad = kernels.convert(x, out)
    want = round_once(fmt, x)
    finite = np.isfinite(want)
    assert bad and kernels.count_nonfinite(out) == int((~finite).sum()) > 0
    assert np.array_equal(out[finite], stored(fmt, want[finite]))


@pytest.mark.parametrize(("fmt", "stored_as"), [(BF16, np.float32), (FP16, np.float32), (FP32, np.float64)])
def test_diff_stores_the_difference_and_counts_the_elements_it_cannot_give_back(
    fmt: Format, stored_as: type[np.floating]
) -> None:
    """Differences that the stored dtype rounds or overflows (bf16 and float32 inputs of every exponent have
    some) do not give back the fine-tuned bits; the engine then widens the tensor, or refuses it."""
    rng = np.random.default_rng(11)
    f, b = random_elements(fmt, rng), random_elements(fmt, rng)
    out = np.empty(N, dtype=stored_as)
    sumsq, inexact, bad = kernels.diff(f, b, out)
    exact = values(fmt, f) - values(fmt, b)
    with np.errstate(over="ignore"):
        assert np.array_equal(out, exact.astype(stored_as))
    back = round_once(fmt, values(fmt, b) + out.astype(np.float64))
    bits = f"uint{8 * f.itemsize}"
    same = stored(fmt, np.where(np.isfinite(back), back, 0.0)).view(bits) == f.view(bits)
    gives_back = np.isfinite(back) & same  # bits: -0.0 does not give back +0.0
    assert inexact == int((~gives_back).sum()) > 0
    assert bad == 0
    assert sumsq == 0.0  # a chunk with inexact elements is stored again, wider: its sum of squares is not counted
    near = stored(fmt, values(fmt, b) * (1 + 2.0**-6))  # a fine-tune's small steps: every difference is exact
    finite = np.isfinite(values(fmt, b)) & np.isfinite(values(fmt, near)) & (np.abs(values(fmt, b)) < 1e30)
    near, base = near[finite], b[finite]
    out = np.empty(near.size, dtype=stored_as)
    sumsq, inexact, bad = kernels.diff(near, base, out)
    wide = values(fmt, near) - values(fmt, base)
    assert (inexact, bad) == (0, 0) and np.array_equal(out, wide.astype(stored_as))
    assert sumsq == pytest.approx(float(np.dot(wide, wide)), rel=1e-12)


def test_bf16_rounding_differs_from_rounding_through_float32() -> None:
    """The near tie above, in bf16: float32 first lands on the tie and then rounds down; once, it rounds up."""
    t, f, b = tie_inputs(BF16)
    out = np.empty_like(t)
    kernels.transfer(t, f, b, 1.0, out)
    through_float32 = stored(BF16, round_once(BF16, (1.0 + f[2:3]).astype(np.float32).astype(np.float64)))
    assert out[2] != through_float32[0]
    assert values(BF16, out)[2] == 1.0 + 2.0**-7


def test_threads_of_one_process_take_turns_on_numba_s_own_thread_pool(tmp_path: Path) -> None:
    """numba's "workqueue" pool (what a machine without OpenMP or TBB gets) aborts the process when two threads
    enter a parallel kernel at once; the engine's operations may run in threads of one process (a flow's tasks)."""
    script = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import numba, numpy as np\n"
        "from graftwork.tasks.engine import kernels\n"
        "a = np.full(1 << 20, 0x3C00, dtype=np.uint16)\n"
        "def run(_):\n"
        "    out = np.empty_like(a)\n"
        "    for _ in range(10):\n"
        "        kernels.transfer(a, a, a, 0.5, out)\n"
        "    return int(out[0])\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    results = sorted(set(pool.map(run, range(8))))\n"
        "print(numba.threading_layer(), results)\n"
    )
    env = child_env(NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["workqueue", "[15360]"]  # 1.0 as bf16 bits


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_a_zero_delta_keeps_the_finetuned_sign_so_negative_zeros_come_back(fmt: Format) -> None:
    """-0.0 in both models (a pruned weight, W·mask) is common: b + (f − b) is +0.0 there, b + (-0.0) is -0.0.
    Only a -0.0 over a +0.0 cannot come back by addition, and is counted inexact."""
    f = stored(fmt, np.array([-0.0, 0.0, -0.0, 1.5, -0.0]))
    b = stored(fmt, np.array([-0.0, -0.0, 0.0, 1.5, -0.0]))
    out = np.empty(f.size, dtype=np.float64 if fmt is FP32 else np.float32)
    assert kernels.diff(f, b, out) == (0.0, 1, 0)  # only f = -0.0 over b = +0.0
    back = np.empty_like(f)
    assert not kernels.apply(b, out, 1.0, back)
    assert back.tobytes() == np.where(np.arange(f.size) == 2, b, f).tobytes()


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_the_finiteness_flag_rises_exactly_where_rounding_gives_inf(fmt: Format) -> None:
    """The one comparison per element that the kernels check finiteness with: halfway from the largest finite
    value to the next power of two rounds (to even) to Inf and is flagged; the float64 just below it rounds to the
    largest finite value and is not; NaN and ±Inf are flagged."""
    _, exponent = np.frexp(fmt.largest)
    edge = fmt.largest + 2.0 ** (int(exponent) - fmt.digits - 1)
    below = float(np.nextafter(edge, 0.0))
    cases = {below: (False, fmt.largest), -below: (False, -fmt.largest), edge: (True, np.inf), -edge: (True, -np.inf)}
    for x, (flagged, value) in cases.items():
        out = np.empty(1, dtype=fmt.array)
        assert kernels.convert(np.array([x]), out) == flagged, x
        assert values(fmt, out)[0] == value == round_once(fmt, np.array([x]))[0]
    for x in (np.nan, np.inf, -np.inf):
        assert kernels.convert(np.array([x]), np.empty(1, dtype=fmt.array))
