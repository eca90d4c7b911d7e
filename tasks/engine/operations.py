"""The diff-vector engine: Δ = m' − m (`diff`), m_t + α·Δ (`apply`), and both in one pass (`transfer`).

Every operation streams one tensor chunk at a time (see :mod:`tasks.engine.stream`), validates its inputs
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

from ...fs import atomic_output_dir, copy_files, write_json
from ..io.checkpoints import ModelFolder, open_model_folder
from ..io.difffolder import DIFF_PREFIX, DiffFolder, open_diff_folder, tokenizer_folder, write_manifest
from ..io.layout import GENERATION_CONFIG
from ..io.shards import DEFAULT_MAX_SHARD_BYTES, PlannedTensor, ShardedWriter
from ..io.stfile import ARRAY_DTYPES, TensorReader, numel
from .checks import check_architectures, check_diff_architecture, check_tensors
from .jobs import diff_job, shift_job
from .stream import Job, run_jobs
from .vocab import RowPlan, check_extension, row_plan, tokenizer_of, vocab_rows

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
        check_architectures({"fine-tuned": ft, "base": bs})
        names = check_tensors(roles)
        base_rows, ft_rows = vocab_rows(bs.tensors), vocab_rows(ft.tensors)
        carried = 0
        if base_rows is not None and ft_rows is not None:
            check_extension(
                base_rows=base_rows, finetuned_rows=ft_rows, base=tokenizer_of(bs), finetuned=tokenizer_of(ft)
            )
            carried = ft_rows - base_rows
        jobs = [diff_job(ft.tensors[n], bs.tensors[n], carried) for n in names]
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
                copy_files(files, tmp / tokenizer_folder(role))
        write_manifest(
            tmp,
            finetuned={**ft.describe(), "content_hash": ft.content_hash(), "tokenizer_digest": ft.tokenizer_digest()},
            base={**bs.describe(), "content_hash": bs.content_hash(), "tokenizer_digest": bs.tokenizer_digest()},
            tensors={
                j.name: {
                    "dtype": j.out_dtype,
                    "source_dtype": j.inputs[0].dtype,
                    "shape": list(j.out_shape),
                    "l2_norm": j.sumsq**0.5,
                }
                for j in jobs
            },
            vocab=None if base_rows is None else {"base_rows": base_rows, "finetuned_rows": ft_rows},
            tied_embeddings=ft.ties_embeddings,
            tokenizers={role: tokenizer_folder(role) if files else None for role, files in tokenizers.items()},
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
        check_architectures(models)
        names = check_tensors({role: m.tensors for role, m in models.items()})
        plan = row_plan(
            tg,
            base_rows=vocab_rows(bs.tensors),
            finetuned_rows=vocab_rows(ft.tensors),
            base_tok=tokenizer_of(bs),
            finetuned_tok=tokenizer_of(ft),
        )
        jobs = [
            shift_job(n, (ft.tensors[n], bs.tensors[n]), ("fine-tuned", "base"), tg.tensors[n], plan, alpha)
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
    diff: Path | DiffFolder,
    target: Path,
    out: Path,
    alpha: float = 1.0,
    allow_pickle: bool = False,
    overwrite: bool = False,
    durable: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    reader: TensorReader | None = None,
    progress: ProgressFn | None = None,
) -> DeltaSummary:
    """Write `target + alpha·Δ` as a model folder, Δ read from a diff folder.

    Computed in float64 and rounded once to the target's dtype; `apply(diff(m', m), m)` gives m'
    back bit for bit. Tensors are taken in the diff's shard order, so that `diff` may be an opened diff
    folder whose shards `reader` makes as they are read, one at a time (a registered diff streamed from the
    blob store: `graftwork.operations.diffs.streamed_diff`); by default Δ is read from a folder's files.
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
        df = diff if isinstance(diff, DiffFolder) else open_diff_folder(diff)
        tg = open_model_folder(target, allow_pickle=allow_pickle, scratch=scratch)
        check_diff_architecture(df, tg)
        names = check_tensors({"target": tg.tensors, "diff": df.tensors})
        names.sort(key=lambda n: (df.tensors[n].path.name, df.tensors[n].start))
        vocab = df.manifest.get("vocab") or {}
        plan = row_plan(
            tg,
            base_rows=vocab.get("base_rows"),
            finetuned_rows=vocab.get("finetuned_rows"),
            base_tok=df.tokenizer("base"),
            finetuned_tok=df.tokenizer("finetuned"),
        )
        jobs = [shift_job(n, (df.tensors[n],), ("diff",), tg.tensors[n], plan, alpha) for n in names]
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
            reader=reader,
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
    reader: TensorReader | None = None,
) -> tuple[int, ShardedWriter]:
    planned = [
        PlannedTensor(j.name, j.out_shape, numel(j.out_shape) * ARRAY_DTYPES[j.out_dtype].itemsize) for j in jobs
    ]
    writer = ShardedWriter(
        tmp, prefix=prefix, tensors=planned, max_shard_bytes=max_shard_bytes, metadata=metadata, durable=durable
    )
    total = sum(i.nbytes for j in jobs for i in j.inputs)
    report = None if progress is None else (lambda done: progress(done, total))
    reader = TensorReader() if reader is None else reader
    try:
        read = run_jobs(jobs, reader, writer, progress=report)
    finally:
        reader.close()
    writer.close()
    return read, writer


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
