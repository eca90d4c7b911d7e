"""The per-tensor jobs of the engine's operations: what to read, what to compute chunk by chunk, and
in which dtype to store the result (see :mod:`graftwork.tasks.engine.kernels` for how jobs run)."""

from __future__ import annotations

import torch

from ..io.stfile import TensorInfo, numel
from .kernels import CHUNK_ELEMENTS, Job, Scratch, delta64, shift, stored_delta
from .vocab import RowPlan, is_vocab_tensor


def shift_job(
    name: str,
    delta_inputs: tuple[TensorInfo, ...],
    roles: tuple[str, ...],
    target: TensorInfo,
    plan: RowPlan | None,
    alpha: float,
    scratch: Scratch,
) -> Job:
    """A job for `target + alpha·Δ`, Δ from (fine-tuned, base) or from a stored diff tensor."""
    out_dtype = target.torch_dtype
    for i in delta_inputs:
        i.torch_dtype  # noqa: B018 - raises UnsupportedDtypeError for a non-float input
    from_pair = len(delta_inputs) == 2

    def delta_into(x: torch.Tensor, y: torch.Tensor, rows: list[torch.Tensor]) -> None:
        if from_pair:
            delta64(x, y, rows[0], rows[1])
        else:
            x.copy_(rows[0].reshape(-1))

    if plan is None or plan.identity or not is_vocab_tensor(name, target.shape):

        def contiguous(job: Job, inputs: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
            x, y, _ = scratch.get(inputs[-1].numel())
            delta_into(x, y, inputs[:-1])
            return shift(x, y, inputs[-1], alpha=alpha, out_dtype=job.out_dtype)

        return Job(name, (*delta_inputs, target), (*roles, "target"), target.shape, out_dtype, contiguous)

    def mapped(job: Job, inputs: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        *sources, tgt = inputs
        rest = tuple(tgt.shape[1:])
        out = torch.empty((plan.out_rows, *rest), dtype=job.out_dtype)
        out[: plan.target_rows] = tgt
        rows = torch.arange(plan.target_rows) if plan.source is None else (plan.source >= 0).nonzero().squeeze(1)
        src = rows if plan.source is None else plan.source[rows]
        step = max(1, CHUNK_ELEMENTS // max(1, numel(rest)))
        for i in range(0, rows.numel(), step):
            t_idx, s_idx = rows[i : i + step], src[i : i + step]
            x, y, _ = scratch.get(t_idx.numel() * numel(rest))
            delta_into(x, y, [s.index_select(0, s_idx) for s in sources])
            shifted = shift(x, y, tgt.index_select(0, t_idx), alpha=alpha, out_dtype=job.out_dtype)
            out.index_copy_(0, t_idx, shifted.view(t_idx.numel(), *rest))
        out[plan.target_rows :] = sources[0].index_select(0, plan.carried)
        return out.reshape(-1)

    out_shape = (plan.out_rows, *target.shape[1:])
    return Job(name, (*delta_inputs, target), (*roles, "target"), out_shape, out_dtype, mapped, whole=True)


def diff_job(ft: TensorInfo, bs: TensorInfo, carried: int, scratch: Scratch) -> Job:
    """A job for Δ = ft − bs, stored in the narrowest dtype that round-trips exactly."""
    narrow = ft.torch_dtype.itemsize <= 2 and bs.torch_dtype.itemsize <= 2
    stored, wider = (torch.float32, torch.float64) if narrow else (torch.float64, None)

    def contiguous(job: Job, inputs: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        f, b = inputs
        x, y, z = scratch.get(f.numel())
        delta64(x, y, f, b)
        d, sumsq = stored_delta(x, y, z, f, stored=job.out_dtype)
        job.sumsq += sumsq
        return d

    if carried and is_vocab_tensor(ft.name, ft.shape):

        def with_carried(job: Job, inputs: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
            f, b = inputs
            shared = b.shape[0]
            step = max(1, CHUNK_ELEMENTS // max(1, numel(tuple(b.shape[1:]))))
            head = f[:shared]
            parts = [
                contiguous(job, [head[i : i + step], b[i : i + step]], i, i + step) for i in range(0, shared, step)
            ]
            parts.append(f[shared:].reshape(-1).to(job.out_dtype))
            return torch.cat(parts)

        return Job(ft.name, (ft, bs), ("fine-tuned", "base"), ft.shape, stored, with_carried, whole=True, wider=wider)
    return Job(ft.name, (ft, bs), ("fine-tuned", "base"), ft.shape, stored, contiguous, wider=wider)
