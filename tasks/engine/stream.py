"""The engine's streaming driver: jobs, one per output tensor, run chunk by chunk through the writer.

Chunks are about half a million elements. Reads (copies from the page cache into a few reused buffers; the
kernel reads ahead from disk) run one thread ahead and writes one thread behind the arithmetic
(:mod:`graftwork.tasks.engine.kernels`, which releases the GIL and runs on all cores but one, left to the reader and
the writer), so disk, page-cache copies and arithmetic overlap. A tensor taken whole (vocabulary rows aligned by
token) is mapped instead.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numba
import numpy as np

from ...errors import InexactDeltaError, NonFiniteError
from ..io.shards import ShardedWriter
from ..io.stfile import ARRAY_DTYPES, TensorInfo, TensorReader, range_bytes
from . import kernels

CHUNK_ELEMENTS = 1 << 19
READ_AHEAD = 4
WRITE_BEHIND = 4
ProgressFn = Callable[[int], None]
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
Compute = Callable[["Job", list[np.ndarray], int, int], tuple[np.ndarray, bool]]


@dataclass
class Job:
    """One output tensor: which inputs to read and how to turn a chunk of them into output.

    `compute(job, inputs, start, stop)` gets the inputs' rows `[start, stop)` (all rows when `whole`) and returns
    the output rows, flattened, in `out_dtype` (a safetensors code), and whether some of them are not finite. When
    it raises `InexactDeltaError`, the tensor is written again from its start in `wider`.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    roles: tuple[str, ...]
    out_shape: tuple[int, ...]
    out_dtype: str
    compute: Compute
    whole: bool = False
    wider: str | None = None
    sumsq: float = field(default=0.0)

    def output(self, n: int) -> np.ndarray:
        """A new array for `n` output elements."""
        return np.empty(n, dtype=ARRAY_DTYPES[self.out_dtype])

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Row ranges in which the tensor is processed."""
        rows = self.out_shape[0] if self.out_shape else 1
        if self.whole or not self.out_shape:
            yield 0, rows
            return
        step = max(1, CHUNK_ELEMENTS // max(1, self.inputs[0].row_numel))
        for start in range(0, rows, step):
            yield start, min(rows, start + step)

    def read(
        self, reader: TensorReader, start: int, stop: int, slot: list[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Read the inputs for one chunk: copied into the buffers of `slot` (one per input, grown when short), or
        mapped when there is no slot or the job takes its tensors whole."""
        if self.whole:
            return [reader.read_rows(i, 0, i.rows) for i in self.inputs]
        if slot is None:
            return [reader.read_rows(i, start, stop) for i in self.inputs]
        while len(slot) < len(self.inputs):
            slot.append(np.empty(0, dtype=np.uint8))
        for info in self.inputs:
            reader.prefetch(info, start, stop)
        arrays = []
        for k, info in enumerate(self.inputs):
            nbytes = range_bytes(info, start, stop)
            if slot[k].size < nbytes:
                slot[k] = np.empty(nbytes, dtype=np.uint8)
            arrays.append(reader.read_into(info, start, stop, slot[k]))
        return arrays

    def checked(self, inputs: list[np.ndarray], start: int, stop: int) -> np.ndarray:
        """`compute`, then a check that the result is finite.

        Raises:
            NonFiniteError: an input or the result holds NaN or Inf; names the tensor and the model.
        """
        out, nonfinite = self.compute(self, inputs, start, stop)
        if nonfinite:
            for role, info, a in zip(self.roles, self.inputs, inputs, strict=True):
                if kernels.count_nonfinite(a.reshape(-1)):
                    raise NonFiniteError(
                        f"tensor {self.name!r} of the {role} model ({info.path}) holds NaN or Inf; "
                        "the model is corrupt or diverged.",
                        tensor=self.name,
                    )
            raise NonFiniteError(
                f"tensor {self.name!r} overflows {DTYPE_NAMES[self.out_dtype]} in the result (NaN or Inf); "
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
    # Item k is read into slot k mod (READ_AHEAD + 1): when its read is submitted, the item before it in the same
    # slot, READ_AHEAD + 1 items earlier, has been computed.
    slots: list[list[np.ndarray]] = [[] for _ in range(READ_AHEAD + 1)]
    done = 0
    with (
        _leave_a_core_for_io(),
        ThreadPoolExecutor(1, thread_name_prefix="graft-read") as rx,
        ThreadPoolExecutor(1, thread_name_prefix="graft-write") as wx,
    ):

        def read(k: int) -> Future[list[np.ndarray]]:
            job, start, stop = items[k]
            return rx.submit(job.read, reader, start, stop, slots[k % len(slots)])

        reads: deque[Future[list[np.ndarray]]] = deque(read(k) for k in range(min(READ_AHEAD, len(items))))
        writes: deque[Future[None]] = deque()
        current: Job | None = None
        for k, (job, start, stop) in enumerate(items):
            inputs = reads.popleft().result()
            if k + READ_AHEAD < len(items):
                reads.append(read(k + READ_AHEAD))
            if job is not current:
                current = job
                job.sumsq = 0.0
                writes.append(wx.submit(writer.begin_tensor, job.name, job.out_dtype, job.out_shape))
            try:
                out = job.checked(inputs, start, stop)
            except InexactDeltaError:
                _widen(job, stop, reader, writer, rx, wx, writes)
            else:
                writes.append(wx.submit(writer.write, out))
            done += sum(a.nbytes for a in inputs)
            while len(writes) > WRITE_BEHIND:
                writes.popleft().result()
            if progress is not None:
                progress(done)
        while writes:
            writes.popleft().result()
    return done


@contextmanager
def _leave_a_core_for_io() -> Iterator[None]:
    """Run the kernels on all cores but one while inside, so that the reader and writer threads (the page-cache
    copies of the inputs and the output) do not compete with them; restore the thread count after."""
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(before, len(os.sched_getaffinity(0)) - 1)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _widen(
    job: Job,
    stop: int,
    reader: TensorReader,
    writer: ShardedWriter,
    rx: ThreadPoolExecutor,
    wx: ThreadPoolExecutor,
    writes: deque[Future[None]],
) -> None:
    """Restart `job`'s tensor in its wider dtype and redo its chunks up to row `stop`, reading them on the reader
    thread `rx`, the one thread that uses `reader` (its descriptors are opened, and an on-demand reader's closed,
    without a lock)."""
    if job.wider is None or job.wider == job.out_dtype:
        raise _inexact(job)
    while writes:
        writes.popleft().result()
    job.out_dtype = job.wider
    job.sumsq = 0.0
    writes.append(wx.submit(writer.restart_tensor, job.wider))
    for start, end in job.chunks():
        if start >= stop:
            break
        try:
            out = job.checked(rx.submit(job.read, reader, start, end).result(), start, end)
        except InexactDeltaError:
            raise _inexact(job) from None
        writes.append(wx.submit(writer.write, out))


def _inexact(job: Job) -> InexactDeltaError:
    return InexactDeltaError(
        f"tensor {job.name!r}: no stored dtype gives back the fine-tuned values exactly: the fine-tuned and base "
        "values are too far apart in magnitude for float64 (the models do not belong together), or the fine-tuned "
        "model has -0.0 where its base has +0.0, which no Δ gives back by addition.",
        tensor=job.name,
    )
