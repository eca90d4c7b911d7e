"""The per-tensor jobs of the engine's operations: what to read, which kernel turns a chunk of it into output, and
in which dtype to store the result (see :mod:`graftwork.tasks.engine.stream` for how jobs run)."""

from __future__ import annotations

import numpy as np

from ...errors import InexactDeltaError
from ..io.stfile import TensorInfo, numel
from . import kernels
from .stream import CHUNK_ELEMENTS, Job
from .vocab import RowPlan, is_vocab_tensor


def shift_job(
    name: str,
    delta_inputs: tuple[TensorInfo, ...],
    roles: tuple[str, ...],
    target: TensorInfo,
    plan: RowPlan | None,
    alpha: float,
) -> Job:
    """A job for `round(target + alpha·Δ)`, Δ from (fine-tuned, base) or from a stored diff tensor.

    Raises:
        UnsupportedDtypeError: an input is not a float tensor.
    """
    for i in (*delta_inputs, target):
        i.array_dtype  # noqa: B018 - raises UnsupportedDtypeError for a non-float input

    def shifted(sources: list[np.ndarray], tgt: np.ndarray, out: np.ndarray) -> bool:
        flat = [s.reshape(-1) for s in sources]
        if len(flat) == 2:
            return kernels.transfer(tgt.reshape(-1), flat[0], flat[1], alpha, out)
        return kernels.apply(tgt.reshape(-1), flat[0], alpha, out)

    if plan is None or plan.identity or not is_vocab_tensor(name, target.shape):

        def contiguous(job: Job, inputs: list[np.ndarray], start: int, stop: int) -> tuple[np.ndarray, bool]:
            out = job.output(inputs[-1].size)
            return out, shifted(inputs[:-1], inputs[-1], out)

        return Job(name, (*delta_inputs, target), (*roles, "target"), target.shape, target.dtype, contiguous)

    def mapped(job: Job, inputs: list[np.ndarray], start: int, stop: int) -> tuple[np.ndarray, bool]:
        *sources, tgt = inputs
        width = numel(tuple(tgt.shape[1:]))
        out = job.output(plan.out_rows * width).reshape(plan.out_rows, width)
        out[: plan.target_rows] = tgt.reshape(plan.target_rows, width)
        rows = np.arange(plan.target_rows) if plan.source is None else np.flatnonzero(plan.source >= 0)
        src = rows if plan.source is None else plan.source[rows]
        step = max(1, CHUNK_ELEMENTS // max(1, width))
        bad = False
        for i in range(0, rows.size, step):
            t_idx, s_idx = rows[i : i + step], src[i : i + step]
            part = job.output(t_idx.size * width)
            bad |= shifted([s[s_idx] for s in sources], tgt[t_idx], part)
            out[t_idx] = part.reshape(t_idx.size, width)
        carried = job.output(plan.carried.size * width)
        bad |= bool(kernels.convert(sources[0][plan.carried].reshape(-1), carried))
        out[plan.target_rows :] = carried.reshape(-1, width)
        return out.reshape(-1), bad

    out_shape = (plan.out_rows, *target.shape[1:])
    return Job(name, (*delta_inputs, target), (*roles, "target"), out_shape, target.dtype, mapped, whole=True)


def diff_job(ft: TensorInfo, bs: TensorInfo, carried: int) -> Job:
    """A job for Δ = ft − bs, stored in the narrowest dtype that round-trips exactly.

    Raises:
        UnsupportedDtypeError: an input is not a float tensor.
    """
    narrow = ft.array_dtype.itemsize <= 2 and bs.array_dtype.itemsize <= 2
    stored, wider = ("F32", "F64") if narrow else ("F64", None)

    def contiguous(job: Job, inputs: list[np.ndarray], start: int, stop: int) -> tuple[np.ndarray, bool]:
        f, b = (a.reshape(-1) for a in inputs)
        out = job.output(f.size)
        sumsq, inexact, bad = kernels.diff(f, b, out)
        if inexact and not bad:
            raise InexactDeltaError(
                f"a chunk of Δ stored in {job.out_dtype} does not give back the fine-tuned values", tensor=None
            )
        job.sumsq += sumsq
        return out, bool(bad)

    if carried and is_vocab_tensor(ft.name, ft.shape):

        def with_carried(job: Job, inputs: list[np.ndarray], start: int, stop: int) -> tuple[np.ndarray, bool]:
            f, b = inputs
            shared = b.shape[0]
            step = max(1, CHUNK_ELEMENTS // max(1, numel(tuple(b.shape[1:]))))
            parts, bad = [], False
            for i in range(0, shared, step):
                part, part_bad = contiguous(job, [f[i : min(shared, i + step)], b[i : i + step]], i, i + step)
                parts.append(part)
                bad |= part_bad
            added = job.output(f[shared:].size)
            bad |= bool(kernels.convert(f[shared:].reshape(-1), added))
            return np.concatenate([*parts, added]), bad

        return Job(ft.name, (ft, bs), ("fine-tuned", "base"), ft.shape, stored, with_carried, whole=True, wider=wider)
    return Job(ft.name, (ft, bs), ("fine-tuned", "base"), ft.shape, stored, contiguous, wider=wider)
