"""The engine's arithmetic and its streaming driver.

Arithmetic is done in float64 on chunks of about half a million elements, in reused buffers, with
one rounding to the output dtype: `round(t + α·(f − b))` and `round(t + α·Δ)` are bit for bit what
the same expression computed on whole float64 tensors gives. Reads (maps of the page cache, read
ahead from disk) run one thread ahead and writes one thread behind the arithmetic, which runs on all
cores but the writer's, so disk, page-cache copies and arithmetic overlap.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ...errors import InexactDeltaError, NonFiniteError
from ..io.shards import ShardedWriter
from ..io.stfile import DTYPE_CODES, TensorInfo, TensorReader

CHUNK_ELEMENTS = 1 << 19
READ_AHEAD = 4
WRITE_BEHIND = 4
ProgressFn = Callable[[int], None]


class Scratch:
    """Reusable float64 buffers, grown on demand."""

    def __init__(self) -> None:
        self._bufs = [torch.empty(0, dtype=torch.float64) for _ in range(3)]

    def get(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Three float64 buffers of `n` elements."""
        if self._bufs[0].numel() < n:
            self._bufs = [torch.empty(n, dtype=torch.float64) for _ in range(3)]
        x, y, z = (b[:n] for b in self._bufs)
        return x, y, z


def shift(
    x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *, alpha: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """round(target + alpha·x) with x a float64 Δ; `y` is float64 scratch of x's size. x is clobbered."""
    if alpha != 1.0:
        x.mul_(alpha)
    y.copy_(target.reshape(-1))
    x.add_(y)
    out = torch.empty(x.numel(), dtype=out_dtype)
    out.copy_(x)
    return out


def delta64(x: torch.Tensor, y: torch.Tensor, finetuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """x ← finetuned − base in float64 (y ← base, kept for the caller)."""
    x.copy_(finetuned.reshape(-1))
    y.copy_(base.reshape(-1))
    return x.sub_(y)


def stored_delta(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, finetuned: torch.Tensor, *, stored: torch.dtype
) -> tuple[torch.Tensor, float]:
    """Round the float64 Δ in `x` to `stored`, check that base + Δ gives back `finetuned` exactly.

    `y` must hold the base in float64. Returns the stored chunk and its sum of squares.

    Raises:
        InexactDeltaError: some element of base + Δ, rounded, differs from the fine-tuned value (the tensor needs a
            wider stored dtype; `run_jobs` widens it, or names the tensor when none is wider).
    """
    d = x.to(stored, copy=True)  # a new tensor: x is scratch, d goes to the writer thread
    z.copy_(d)
    sumsq = float(torch.dot(z, z))
    z.add_(y)
    back = z.to(finetuned.dtype)
    if not torch.equal(_bits(back), _bits(finetuned.reshape(-1))):
        raise InexactDeltaError(
            f"a chunk of Δ stored in {stored} does not give back the fine-tuned values", tensor=None
        )
    return d, sumsq


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every element is finite.

    Any NaN or Inf makes a sum non-finite, and a sum costs a tenth of `isfinite(t).all()`. bf16 and
    float32 sums accumulate in float32; float16 ones are asked for float32 so that they do not overflow.
    A sum can still overflow with huge finite elements, so a non-finite sum is confirmed element by
    element.
    """
    if t.dtype != torch.float64:
        total = t.sum(dtype=torch.float32) if t.dtype == torch.float16 else t.sum()
        if math.isfinite(float(total)):
            return True
    return bool(torch.isfinite(t).all())


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@dataclass
class Job:
    """One output tensor: which inputs to read and how to turn a chunk of them into output.

    `compute(job, inputs, start, stop)` gets the inputs' rows `[start, stop)` (all rows when
    `whole`) and returns the output rows, flattened. When it raises `InexactDeltaError`, the tensor is written
    again from its start in `wider`.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    roles: tuple[str, ...]
    out_shape: tuple[int, ...]
    out_dtype: torch.dtype
    compute: Callable[[Job, list[torch.Tensor], int, int], torch.Tensor]
    whole: bool = False
    wider: torch.dtype | None = None
    sumsq: float = field(default=0.0)

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Row ranges in which the tensor is processed."""
        rows = self.out_shape[0] if self.out_shape else 1
        if self.whole or not self.out_shape:
            yield 0, rows
            return
        step = max(1, CHUNK_ELEMENTS // max(1, self.inputs[0].row_numel))
        for start in range(0, rows, step):
            yield start, min(rows, start + step)

    def read(self, reader: TensorReader, start: int, stop: int) -> list[torch.Tensor]:
        """Read the inputs for one chunk."""
        if self.whole:
            return [reader.read_rows(i, 0, i.rows) for i in self.inputs]
        return [reader.read_rows(i, start, stop) for i in self.inputs]

    def checked(self, inputs: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """`compute`, then a check that the result is finite.

        Raises:
            NonFiniteError: an input or the result holds NaN or Inf; names the tensor and the model.
        """
        out = self.compute(self, inputs, start, stop)
        if not _all_finite(out):
            for role, info, t in zip(self.roles, self.inputs, inputs, strict=True):
                if not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(
                        f"tensor {self.name!r} of the {role} model ({info.path}) holds NaN or Inf; "
                        "the model is corrupt or diverged.",
                        tensor=self.name,
                    )
            raise NonFiniteError(
                f"tensor {self.name!r} overflows {self.out_dtype} in the result (NaN or Inf); "
                "lower alpha or check that the models belong together.",
                tensor=self.name,
            )
        return out


def run_jobs(jobs: list[Job], reader: TensorReader, writer: ShardedWriter, *, progress: ProgressFn | None) -> int:
    """Stream every job through the writer, reading ahead and writing behind.

    Returns:
        Bytes read.

    Raises:
        Whatever a job's read, compute or write raises; the caller discards the output.
    """
    items = [(job, start, stop) for job in jobs for start, stop in job.chunks()]
    done = 0
    with (
        _leave_a_core_to_the_writer(),
        ThreadPoolExecutor(1, thread_name_prefix="graft-read") as rx,
        ThreadPoolExecutor(1, thread_name_prefix="graft-write") as wx,
    ):
        reads: deque[Future[list[torch.Tensor]]] = deque()
        writes: deque[Future[None]] = deque()
        for job, start, stop in items[:READ_AHEAD]:
            reads.append(rx.submit(job.read, reader, start, stop))
        current: Job | None = None
        for k, (job, start, stop) in enumerate(items):
            inputs = reads.popleft().result()
            if k + READ_AHEAD < len(items):
                nj, ns, ne = items[k + READ_AHEAD]
                reads.append(rx.submit(nj.read, reader, ns, ne))
            if job is not current:
                current = job
                job.sumsq = 0.0
                writes.append(wx.submit(writer.begin_tensor, job.name, DTYPE_CODES[job.out_dtype], job.out_shape))
            try:
                out = job.checked(inputs, start, stop)
            except InexactDeltaError:
                _widen(job, stop, reader, writer, wx, writes)
            else:
                writes.append(wx.submit(writer.write, out))
            done += sum(t.numel() * t.element_size() for t in inputs)
            while len(writes) > WRITE_BEHIND:
                writes.popleft().result()
            if progress is not None:
                progress(done)
        while writes:
            writes.popleft().result()
    return done


@contextmanager
def _leave_a_core_to_the_writer() -> Iterator[None]:
    """Run torch's arithmetic on all cores but one while inside, so that the writer thread (the
    page-cache copies of the output) does not compete with it; restore the thread count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, len(os.sched_getaffinity(0)) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _widen(
    job: Job,
    stop: int,
    reader: TensorReader,
    writer: ShardedWriter,
    wx: ThreadPoolExecutor,
    writes: deque[Future[None]],
) -> None:
    """Restart `job`'s tensor in its wider dtype and redo its chunks up to row `stop`."""
    if job.wider is None or job.wider == job.out_dtype:
        raise _inexact(job)
    while writes:
        writes.popleft().result()
    job.out_dtype = job.wider
    job.sumsq = 0.0
    writes.append(wx.submit(writer.restart_tensor, DTYPE_CODES[job.wider]))
    for start, end in job.chunks():
        if start >= stop:
            break
        try:
            out = job.checked(job.read(reader, start, end), start, end)
        except InexactDeltaError:
            raise _inexact(job) from None
        writes.append(wx.submit(writer.write, out))


def _inexact(job: Job) -> InexactDeltaError:
    return InexactDeltaError(
        f"tensor {job.name!r}: no stored dtype gives back the fine-tuned values exactly (the fine-tuned "
        "and base values are too far apart in magnitude for float64); the models do not belong together.",
        tensor=job.name,
    )
