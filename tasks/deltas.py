"""The diff-vector engine: Δ = m' − m (`diff`), m_t + α·Δ (`apply`), and both in one pass (`transfer`).

Every operation streams one tensor chunk at a time (see :mod:`tasks.kernels`), validates its inputs
before it writes anything, and writes its output folder atomically.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import torch

from tasks.checkpoints import (
    GENERATION_CONFIG,
    ModelFolder,
    atomic_output_dir,
    copy_files,
    open_model_folder,
    write_json,
)
from tasks.difffolder import DIFF_PREFIX, DiffFolder, open_diff_folder, write_manifest
from tasks.errors import ArchitectureMismatchError, ShapeMismatchError, TensorSetMismatchError
from tasks.kernels import CHUNK_ELEMENTS, Job, Scratch, delta64, run_jobs, shift, stored_delta
from tasks.shards import DEFAULT_MAX_SHARD_BYTES, PlannedTensor, ShardedWriter
from tasks.stfile import DTYPE_CODES, TensorInfo, TensorReader, numel
from tasks.vocab import RowPlan, Tokenizer, check_extension, is_vocab_tensor, plan_rows

Operation = Literal["diff", "apply", "transfer"]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class DeltaSummary:
    """What an engine operation did."""

    operation: Operation
    output: Path
    tensors: int
    shards: int
    bytes_read: int
    bytes_written: int
    seconds: float
    rows: dict[str, int] | None = None
    widened: tuple[str, ...] = field(default=())


def diff(
    *,
    finetuned: Path,
    base: Path,
    out: Path,
    allow_pickle: bool = False,
    overwrite: bool = False,
    durable: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: ProgressFn | None = None,
) -> DeltaSummary:
    """Write the diff vector `finetuned − base` as a diff folder (shards + `diff.json`).

    Each tensor of Δ is stored in the narrowest of float32/float64 for which base + Δ, rounded to the
    fine-tuned dtype, gives back the fine-tuned tensor bit for bit; this is checked chunk by chunk.
    Rows the fine-tuned model added to its vocabulary are stored as they are (carried).
    The output is atomic: nothing appears at `out` until it is complete. With `durable` it is also
    fsynced before this returns (survives a power loss, at the cost of waiting for the disk).

    Raises:
        ModelFolderError, PickleWeightsError: an input folder cannot be read.
        ArchitectureMismatchError, TensorSetMismatchError, ShapeMismatchError, UnsupportedDtypeError,
        VocabularyError: the two models cannot be diffed; nothing is written.
        NonFiniteError, InexactDeltaError: found while streaming; nothing is left at `out`.
        OutputExistsError: `out` exists and `overwrite` is false.
    """
    start = time.perf_counter()
    with _inputs(out, overwrite=overwrite, durable=durable) as (tmp, scratch):
        ft = open_model_folder(finetuned, allow_pickle=allow_pickle, scratch=scratch)
        bs = open_model_folder(base, allow_pickle=allow_pickle, scratch=scratch)
        roles = {"fine-tuned": ft.tensors, "base": bs.tensors}
        _check_architectures({"fine-tuned": ft, "base": bs})
        names = _check_tensors(roles)
        base_rows, ft_rows = _vocab_rows(bs.tensors), _vocab_rows(ft.tensors)
        carried = 0
        if base_rows is not None and ft_rows is not None:
            check_extension(base_rows=base_rows, finetuned_rows=ft_rows, base=_tokenizer(bs), finetuned=_tokenizer(ft))
            carried = ft_rows - base_rows
        scratch64 = Scratch()
        jobs = [_diff_job(ft.tensors[n], bs.tensors[n], carried, scratch64) for n in names]
        metadata = _provenance("diff", {"finetuned": ft, "base": bs}, alpha=None)
        read, writer = _stream(
            jobs,
            tmp,
            prefix=DIFF_PREFIX,
            max_shard_bytes=max_shard_bytes,
            metadata=metadata,
            durable=durable,
            progress=progress,
        )
        tokenizers = {"base": bs.tokenizer_files(), "finetuned": ft.tokenizer_files()}
        for role, files in tokenizers.items():
            if files:
                copy_files(files, tmp / f"{role}_tokenizer")
        write_manifest(
            tmp,
            finetuned={**ft.describe(), "content_hash": ft.content_hash(), "tokenizer_digest": ft.tokenizer_digest()},
            base={**bs.describe(), "content_hash": bs.content_hash(), "tokenizer_digest": bs.tokenizer_digest()},
            tensors={
                j.name: {
                    "dtype": DTYPE_CODES[j.out_dtype],
                    "source_dtype": j.inputs[0].dtype,
                    "shape": list(j.out_shape),
                    "l2_norm": j.sumsq**0.5,
                }
                for j in jobs
            },
            vocab=None if base_rows is None else {"base_rows": base_rows, "finetuned_rows": ft_rows},
            tied_embeddings=ft.ties_embeddings,
            tokenizers={role: f"{role}_tokenizer" if files else None for role, files in tokenizers.items()},
            version=_version(),
        )
        widened = tuple(j.name for j in jobs if j.wider is not None and j.out_dtype == j.wider)
    return DeltaSummary(
        operation="diff",
        output=Path(out).resolve(),
        tensors=len(jobs),
        shards=writer.shard_count,
        bytes_read=read,
        bytes_written=writer.bytes_written,
        seconds=time.perf_counter() - start,
        rows={"carried": carried} if base_rows is not None else None,
        widened=widened,
    )


def transfer(
    *,
    finetuned: Path,
    base: Path,
    target: Path,
    out: Path,
    alpha: float = 1.0,
    allow_pickle: bool = False,
    overwrite: bool = False,
    durable: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: ProgressFn | None = None,
) -> DeltaSummary:
    """Write `target + alpha·(finetuned − base)` as a model folder, in one pass, without storing Δ.

    Computed in float64 and rounded once to the target's dtype. Config, generation config and
    tokenizer come from the target (the fine-tuned tokenizer when fine-tuning added tokens).
    The output is atomic: nothing appears at `out` until it is complete. With `durable` it is also
    fsynced before this returns (survives a power loss, at the cost of waiting for the disk).

    Raises:
        ModelFolderError, PickleWeightsError: an input folder cannot be read.
        ArchitectureMismatchError, TensorSetMismatchError, ShapeMismatchError, UnsupportedDtypeError,
        VocabularyError: the models cannot be combined; nothing is written.
        NonFiniteError: found while streaming; nothing is left at `out`.
        OutputExistsError: `out` exists and `overwrite` is false.
    """
    start = time.perf_counter()
    with _inputs(out, overwrite=overwrite, durable=durable) as (tmp, scratch):
        ft = open_model_folder(finetuned, allow_pickle=allow_pickle, scratch=scratch)
        bs = open_model_folder(base, allow_pickle=allow_pickle, scratch=scratch)
        tg = open_model_folder(target, allow_pickle=allow_pickle, scratch=scratch)
        models = {"target": tg, "fine-tuned": ft, "base": bs}
        _check_architectures(models)
        names = _check_tensors({role: m.tensors for role, m in models.items()})
        plan = _row_plan(
            tg,
            base_rows=_vocab_rows(bs.tensors),
            finetuned_rows=_vocab_rows(ft.tensors),
            base_tok=_tokenizer(bs),
            finetuned_tok=_tokenizer(ft),
        )
        scratch64 = Scratch()
        jobs = [
            _shift_job(n, (ft.tensors[n], bs.tensors[n]), ("fine-tuned", "base"), tg.tensors[n], plan, alpha, scratch64)
            for n in names
        ]
        metadata = _provenance("transfer", models, alpha=alpha)
        read, writer = _stream(
            jobs,
            tmp,
            prefix="model",
            max_shard_bytes=max_shard_bytes,
            metadata=metadata,
            durable=durable,
            progress=progress,
        )
        _write_model_files(tmp, target=tg, plan=plan, finetuned_tokenizer=ft.tokenizer_files())
    return _shift_summary("transfer", out, jobs, writer, read, plan, start)


def apply(
    *,
    diff: Path,
    target: Path,
    out: Path,
    alpha: float = 1.0,
    allow_pickle: bool = False,
    overwrite: bool = False,
    durable: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: ProgressFn | None = None,
) -> DeltaSummary:
    """Write `target + alpha·Δ` as a model folder, Δ read from a diff folder.

    Computed in float64 and rounded once to the target's dtype; `apply(diff(m', m), m)` gives m'
    back bit for bit.
    The output is atomic: nothing appears at `out` until it is complete. With `durable` it is also
    fsynced before this returns (survives a power loss, at the cost of waiting for the disk).

    Raises:
        ModelFolderError: the diff or target folder cannot be read.
        PickleWeightsError: the target holds only pickle weights and `allow_pickle` is false.
        ArchitectureMismatchError, TensorSetMismatchError, ShapeMismatchError, UnsupportedDtypeError,
        VocabularyError: the diff does not fit the target; nothing is written.
        NonFiniteError: found while streaming; nothing is left at `out`.
        OutputExistsError: `out` exists and `overwrite` is false.
    """
    start = time.perf_counter()
    with _inputs(out, overwrite=overwrite, durable=durable) as (tmp, scratch):
        df = open_diff_folder(diff)
        tg = open_model_folder(target, allow_pickle=allow_pickle, scratch=scratch)
        _check_diff_architecture(df, tg)
        names = _check_tensors({"target": tg.tensors, "diff": df.tensors})
        vocab = df.manifest.get("vocab") or {}
        plan = _row_plan(
            tg,
            base_rows=vocab.get("base_rows"),
            finetuned_rows=vocab.get("finetuned_rows"),
            base_tok=df.tokenizer("base"),
            finetuned_tok=df.tokenizer("finetuned"),
        )
        scratch64 = Scratch()
        jobs = [_shift_job(n, (df.tensors[n],), ("diff",), tg.tensors[n], plan, alpha, scratch64) for n in names]
        metadata = _provenance("apply", {"target": tg}, alpha=alpha)
        metadata["graftwork_diff"] = json.dumps(
            {"path": str(df.path), "finetuned": df.manifest["finetuned"], "base": df.manifest["base"]}
        )
        read, writer = _stream(
            jobs,
            tmp,
            prefix="model",
            max_shard_bytes=max_shard_bytes,
            metadata=metadata,
            durable=durable,
            progress=progress,
        )
        _write_model_files(tmp, target=tg, plan=plan, finetuned_tokenizer=df.tokenizer_files("finetuned"))
    return _shift_summary("apply", out, jobs, writer, read, plan, start)


@contextmanager
def _inputs(out: Path, *, overwrite: bool, durable: bool) -> Iterator[tuple[Path, Path]]:
    """The atomic output folder and a scratch folder inside it (for converted pickle weights).

    The scratch folder is removed before the rename; a killed run leaves it inside the partial
    folder, which the next run to the same output removes.
    """
    with (
        atomic_output_dir(out, overwrite=overwrite, durable=durable) as tmp,
        tempfile.TemporaryDirectory(dir=tmp, prefix=".scratch-") as scratch,
    ):
        yield tmp, Path(scratch)


def _stream(
    jobs: list[Job],
    tmp: Path,
    *,
    prefix: str,
    max_shard_bytes: int,
    metadata: dict[str, str],
    durable: bool,
    progress: ProgressFn | None,
) -> tuple[int, ShardedWriter]:
    planned = [PlannedTensor(j.name, j.out_shape, numel(j.out_shape) * j.out_dtype.itemsize) for j in jobs]
    writer = ShardedWriter(
        tmp, prefix=prefix, tensors=planned, max_shard_bytes=max_shard_bytes, metadata=metadata, durable=durable
    )
    total = sum(i.nbytes for j in jobs for i in j.inputs)
    report = None if progress is None else (lambda done: progress(done, total))
    reader = TensorReader()
    try:
        read = run_jobs(jobs, reader, writer, progress=report)
    finally:
        reader.close()
    writer.close()
    return read, writer


def _shift_job(
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


def _diff_job(ft: TensorInfo, bs: TensorInfo, carried: int, scratch: Scratch) -> Job:
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


def _row_plan(
    target: ModelFolder,
    *,
    base_rows: int | None,
    finetuned_rows: int | None,
    base_tok: Tokenizer,
    finetuned_tok: Tokenizer,
) -> RowPlan | None:
    """The vocabulary plan, or None when the models have no vocabulary tensors."""
    target_rows = _vocab_rows(target.tensors)
    if target_rows is None or base_rows is None or finetuned_rows is None:
        return None
    check_extension(base_rows=base_rows, finetuned_rows=finetuned_rows, base=base_tok, finetuned=finetuned_tok)
    return plan_rows(
        base_rows=base_rows,
        finetuned_rows=finetuned_rows,
        target_rows=target_rows,
        base=base_tok,
        finetuned=finetuned_tok,
        target=_tokenizer(target),
    )


def _tokenizer(model: ModelFolder) -> Tokenizer:
    return Tokenizer(folder=model.path if model.tokenizer_files() else None, digest=model.tokenizer_digest())


def _vocab_rows(tensors: dict[str, TensorInfo]) -> int | None:
    """Rows of the vocabulary tensors (they must agree), or None when there are none.

    Raises:
        ShapeMismatchError: two vocabulary tensors of one model have different row counts.
    """
    rows = {n: i.shape[0] for n, i in tensors.items() if is_vocab_tensor(n, i.shape)}
    if len(set(rows.values())) > 1:
        raise ShapeMismatchError(f"vocabulary tensors disagree on their number of rows: {rows}")
    return next(iter(rows.values()), None)


def _check_architectures(models: dict[str, ModelFolder]) -> None:
    """Raise ArchitectureMismatchError unless every model shares model_type, architectures, tying."""
    (ref_role, ref), *rest = models.items()
    for role, m in rest:
        for key in ("model_type", "architectures"):
            if ref.config.get(key) != m.config.get(key):
                raise ArchitectureMismatchError(
                    f"the {ref_role} model ({ref.path}) has {key}={ref.config.get(key)!r} but the {role} model "
                    f"({m.path}) has {m.config.get(key)!r}; diff vectors only carry over between models of one "
                    "architecture."
                )
        if ref.ties_embeddings != m.ties_embeddings:
            raise ArchitectureMismatchError(
                f"the {ref_role} model {'ties' if ref.ties_embeddings else 'does not tie'} its input and output "
                f"embeddings but the {role} model {'does' if m.ties_embeddings else 'does not'}; set "
                "tie_word_embeddings consistently."
            )


def _check_diff_architecture(df: DiffFolder, target: ModelFolder) -> None:
    model_type = df.manifest["base"].get("model_type")
    if model_type != target.config.get("model_type"):
        raise ArchitectureMismatchError(
            f"the diff {df.path} was made on a {model_type!r} model but the target ({target.path}) is "
            f"{target.config.get('model_type')!r}; diff vectors only carry over between models of one architecture."
        )
    if bool(df.manifest.get("tied_embeddings")) != target.ties_embeddings:
        raise ArchitectureMismatchError(
            f"the diff {df.path} and the target ({target.path}) disagree on tied input/output embeddings."
        )


def _check_tensors(tensor_sets: dict[str, dict[str, TensorInfo]]) -> list[str]:
    """Check that every model has the same tensors, float and of matching shapes; return the names.

    Vocabulary tensors may differ in their first dimension (rows are aligned later).

    Raises:
        TensorSetMismatchError: a tensor is missing from one model or extra in it.
        UnsupportedDtypeError: a tensor is not a float tensor.
        ShapeMismatchError: a tensor's shapes differ and it is not a vocabulary tensor.
    """
    (ref_role, ref), *rest = tensor_sets.items()
    for role, tensors in rest:
        missing = [n for n in ref if n not in tensors]
        extra = [n for n in tensors if n not in ref]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {_names(missing)} that the {ref_role} model has")
            if extra:
                parts.append(f"has {_names(extra)} that the {ref_role} model lacks")
            raise TensorSetMismatchError(
                f"the {role} model {' and '.join(parts)}; the models must share one architecture and layout."
            )
    for name, info in ref.items():
        shapes = {role: tensors[name].shape for role, tensors in tensor_sets.items()}
        for tensors in tensor_sets.values():
            tensors[name].torch_dtype  # noqa: B018 - raises UnsupportedDtypeError for a non-float tensor
        if len(set(shapes.values())) > 1:
            same_rest = len({s[1:] for s in shapes.values()}) == 1
            if not (is_vocab_tensor(name, info.shape) and same_rest):
                desc = ", ".join(f"{list(s)} in the {r} model" for r, s in shapes.items())
                raise ShapeMismatchError(f"tensor {name!r} has shape {desc}; shapes must match.")
    return list(ref)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"tensor{'s' if len(names) > 1 else ''} {shown}{more}"


def _write_model_files(
    tmp: Path, *, target: ModelFolder, plan: RowPlan | None, finetuned_tokenizer: list[Path]
) -> None:
    """config, generation config and tokenizer of an output model folder."""
    config = dict(target.config)
    if plan is not None and plan.out_rows != plan.target_rows:
        config["vocab_size"] = plan.out_rows
        if isinstance(config.get("text_config"), dict) and "vocab_size" in config["text_config"]:
            config["text_config"] = {**config["text_config"], "vocab_size": plan.out_rows}
    write_json(tmp / "config.json", config)
    if (target.path / GENERATION_CONFIG).is_file():
        copy_files([target.path / GENERATION_CONFIG], tmp)
    source = "target" if plan is None else plan.tokenizer_from
    if source == "finetuned":
        copy_files(finetuned_tokenizer, tmp)
    elif source == "target+added":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(target.path), trust_remote_code=False)
        tok.add_tokens(list(plan.added_tokens) if plan else [])
        tok.save_pretrained(str(tmp))
    else:
        copy_files(target.tokenizer_files(), tmp)


def _shift_summary(
    op: Operation, out: Path, jobs: list[Job], writer: ShardedWriter, read: int, plan: RowPlan | None, start: float
) -> DeltaSummary:
    return DeltaSummary(
        operation=op,
        output=Path(out).resolve(),
        tensors=len(jobs),
        shards=writer.shard_count,
        bytes_read=read,
        bytes_written=writer.bytes_written,
        seconds=time.perf_counter() - start,
        rows=None if plan is None else plan.counts(),
    )


def _provenance(op: Operation, models: dict[str, ModelFolder], *, alpha: float | None) -> dict[str, str]:
    """safetensors metadata: string values only."""
    meta = {
        "format": "pt",
        "graftwork_version": _version(),
        "graftwork_operation": op,
        "graftwork_created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if alpha is not None:
        meta["graftwork_alpha"] = repr(float(alpha))
    for role, m in models.items():
        meta[f"graftwork_{role.replace('-', '')}"] = json.dumps(m.describe())
    return meta


def _version() -> str:
    return version("graftwork")


__all__ = ["DeltaSummary", "apply", "diff", "transfer"]
