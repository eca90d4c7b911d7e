"""The gate's evidence kept: every evaluation's per-sample scores in the blob store, and an evaluation read back
from its eval result rows (the paired comparison itself is `tasks.evidence`).

An evaluation's samples are one blob (zstd-compressed JSON lines: the groups it scored and their subtasks,
then one `SampleScore` a line) that each of its eval result rows names, with the fingerprint of its task
(`tasks.evaluate.Fingerprint`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import zstandard

from ..errors import BlobCorruptError
from ..storage import Registry, evals
from ..storage.models import EvalResult
from ..tasks.results import EvalRecord, Evaluation, Fingerprint, SampleScore

LEVEL = 10


def store_evaluation(registry: Registry, *, evaluation: Evaluation) -> list[evals.Score]:
    """Put the evaluation's samples in the blob store; its records as the registry records them, each naming
    the blob and its fingerprint."""
    blob = None
    if evaluation.samples:
        head = json.dumps({"groups": evaluation.groups}).encode() + b"\n"
        lines = head + b"".join(s.model_dump_json().encode() + b"\n" for s in evaluation.samples)
        blob = registry.store.put(io.BytesIO(zstandard.ZstdCompressor(level=LEVEL).compress(lines))).name
    return [score_of(r, samples_blob=blob) for r in evaluation.records]


def score_of(record: EvalRecord, *, samples_blob: str | None = None) -> evals.Score:
    """An eval record as the registry records it."""
    fields = record.model_dump(exclude={"lm_eval_version", "fingerprint"})
    printed = record.fingerprint
    return evals.Score(
        **fields,
        harness_version=record.lm_eval_version,
        samples_blob=samples_blob,
        fingerprint=None if printed is None else printed.model_dump(mode="json"),
        setup_sha256=None if printed is None else printed.setup_sha256,
        model_sha256=None if printed is None else printed.model_sha256,
    )


def stored_evaluation(registry: Registry, *, rows: Sequence[EvalResult]) -> Evaluation:
    """An evaluation as the registry holds it: its records (with fingerprints) and, where its rows name a
    blob, its samples.

    Raises:
        BlobCorruptError, BlobMissingError: the samples' blob is damaged or gone.
    """
    samples: list[SampleScore] = []
    groups: dict[str, list[str]] = {}
    for blob in sorted({row.samples_blob for row in rows if row.samples_blob is not None}):
        more, scored = _samples(registry, blob=blob)
        groups.update(more)
        samples += scored
    return Evaluation(records=[_record(row) for row in rows], samples=samples, groups=groups)


def _record(row: EvalResult) -> EvalRecord:
    fields = {f: getattr(row, f) for f in EvalRecord.model_fields if f not in ("lm_eval_version", "fingerprint")}
    printed = None if row.fingerprint is None else Fingerprint.model_validate(row.fingerprint)
    return EvalRecord(**fields, lm_eval_version=row.harness_version, fingerprint=printed)


def _samples(registry: Registry, *, blob: str) -> tuple[dict[str, list[str]], list[SampleScore]]:
    sink = io.BytesIO()
    registry.store.read_into(blob, sink, owner="the samples of an evaluation")
    try:
        head, *lines = zstandard.ZstdDecompressor().decompressobj().decompress(sink.getvalue()).splitlines()
        groups = {str(k): [str(t) for t in v] for k, v in json.loads(head)["groups"].items()}
        return groups, [SampleScore.model_validate_json(line) for line in lines if line]
    except (zstandard.ZstdError, ValueError, KeyError) as exc:
        raise BlobCorruptError(
            f"blob {blob} (the samples of an evaluation) cannot be read ({exc}); run `graft registry verify`.",
            blob=blob,
        ) from exc
