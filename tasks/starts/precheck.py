"""Will the previous release's diff carry over to the new release? A pre-check on the weights alone.

Transfer works when the old and the new base lie close together in parameter space (paper §6). This
measures how far the new base `M_i` moved from the previous one `M_{i−1}`, relative to `M_{i−1}` itself
and to the diff Δ fine-tuned on it, and the cosine between Δ and the base's move, per layer type and
overall. It streams one tensor (in row chunks) at a time, in the diff's shard order, so a registered
diff whose shards a reader makes as they are read (`graftwork.operations.diffs.streamed_diff`) works as
in `engine.apply`.

The verdict, `lineage_broken`, is the overall relative move ‖M_i − M_{i−1}‖ / ‖M_{i−1}‖ above
`BROKEN_SHIFT`. Measured on the test bed, seeds 0–2 (`benchmarks/replicate.py --auto`, "Pre-check"): successive
releases move 0.03–0.44 of the previous release's norm (M1 → M2 the farthest, 0.40–0.44); a model from another
initialisation sits at 1.14 (its weight matrices at ~1.41 = √2, as two independent draws; the norms pull the
overall figure down). The threshold, 0.8, is 1.8× the farthest release and 1/1.4 of the control. The cosine
between Δ and the base's move is near zero in both cases (0.00–0.17), so it is reported, not used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..engine import kernels
from ..engine.checks import check_architectures, check_diff_architecture, check_tensors
from ..io.checkpoints import open_model_folder
from ..io.difffolder import DiffFolder, open_diff_folder
from ..io.stfile import TensorInfo, TensorReader
from .choice import Precheck, Shift

BROKEN_SHIFT = 0.8
"""`lineage_broken` when ‖M_i − M_{i−1}‖ / ‖M_{i−1}‖ is above this (measured: releases ≤ 0.44, control 1.14)."""
CHUNK_ELEMENTS = 1 << 20
# Layer types, by parameter name; the first pattern that matches names the group.
GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("attention.q", r"(q_proj|query|\.wq)\."),
        ("attention.k", r"(k_proj|key|\.wk)\."),
        ("attention.v", r"(v_proj|value|\.wv)\."),
        ("attention.o", r"(o_proj|out_proj|\.wo|attention\.dense|attn\.c_proj)\."),
        ("attention.qkv", r"(qkv_proj|query_key_value|c_attn|Wqkv)\."),
        ("mlp", r"(mlp|feed_forward|ffn|experts|gate_proj|up_proj|down_proj|fc1|fc2)\."),
        ("embeddings", r"(embed_tokens|wte|wpe|word_embeddings|embed_in|tok_embeddings)\."),
        ("lm_head", r"(lm_head|embed_out|output)\.weight$"),
        ("norms", r"(norm|ln_|layernorm|ln_f)"),
    )
)


def group_of(name: str) -> str:
    """The layer type of a parameter: attention.q/k/v/o/qkv, mlp, embeddings, lm_head, norms, or other."""
    return next((group for group, pattern in GROUPS if pattern.search(name)), "other")


class _Sums:
    def __init__(self) -> None:
        self.tensors, self.prev, self.move, self.delta, self.dot = 0, 0.0, 0.0, 0.0, 0.0

    def add(self, prev: np.ndarray, new: np.ndarray, delta: np.ndarray) -> None:
        p, n, d = (_float64(a) for a in (prev, new, delta))
        move = n - p
        self.prev += float(np.dot(p, p))
        self.move += float(np.dot(move, move))
        self.delta += float(np.dot(d, d))
        self.dot += float(np.dot(move, d))

    def merge(self, other: _Sums) -> None:
        self.tensors += other.tensors
        self.prev, self.move = self.prev + other.prev, self.move + other.move
        self.delta, self.dot = self.delta + other.delta, self.dot + other.dot

    def shift(self) -> Shift:
        move, prev, delta = math.sqrt(self.move), math.sqrt(self.prev), math.sqrt(self.delta)
        return Shift(
            tensors=self.tensors,
            base_shift=move / prev if prev else (0.0 if not move else math.inf),
            shift_to_diff=move / delta if delta else (0.0 if not move else math.inf),
            cosine=self.dot / (move * delta) if move and delta else 0.0,
        )


def precheck(
    *,
    previous_base: Path,
    base: Path,
    diff: Path | DiffFolder,
    reader: TensorReader | None = None,
    threshold: float = BROKEN_SHIFT,
) -> Precheck:
    """Measure whether `diff` (Δ, fine-tuned on `previous_base`) can be carried over to `base`.

    Args:
        previous_base: the model folder Δ was made on, M_{i−1}.
        base: the new release's model folder, M_i.
        diff: a diff folder, or an opened one whose shards `reader` makes as they are read (as `engine.apply`).
        reader: reads the tensors (closed when this returns); by default one over the folders' files.
        threshold: the overall relative move above which the lineage counts as broken.

    Vocabulary tensors whose row counts differ are compared on their common leading rows.

    Raises:
        ModelFolderError: a folder cannot be read.
        ArchitectureMismatchError, TensorSetMismatchError, ShapeMismatchError, UnsupportedDtypeError: the two
            bases and the diff do not share one architecture and tensor set.
        ValueError: `threshold` is not positive.
    """
    if not threshold > 0:
        raise ValueError(f"threshold={threshold} must be a positive relative distance, e.g. {BROKEN_SHIFT}")
    prev, new = open_model_folder(previous_base), open_model_folder(base)
    df = diff if isinstance(diff, DiffFolder) else open_diff_folder(diff)
    check_architectures({"previous base": prev, "new base": new})
    check_diff_architecture(df, new)
    names = check_tensors({"new base": new.tensors, "previous base": prev.tensors, "diff": df.tensors})
    names.sort(key=lambda n: (df.tensors[n].path.name, df.tensors[n].start))
    reader = TensorReader() if reader is None else reader
    sums: dict[str, _Sums] = {}
    try:
        for name in names:
            group = sums.setdefault(group_of(name), _Sums())
            group.tensors += 1
            for chunk in _chunks(reader, (prev.tensors[name], new.tensors[name], df.tensors[name])):
                group.add(*chunk)
    finally:
        reader.close()
    total = _Sums()
    for group in sums.values():
        total.merge(group)
    overall = total.shift()
    broken = overall.base_shift > threshold
    relation = "above" if broken else "within"
    reason = (
        f"the new release moved {overall.base_shift:.3f} of the previous release's norm ({relation} the "
        f"threshold {threshold}; {overall.shift_to_diff:.2f}× the diff's norm, cosine with the diff "
        f"{overall.cosine:+.3f}): "
        + (
            "it is not a continuation of the release the diff was fine-tuned on (another initialisation or "
            "architecture lineage), so the diff is not carried over; fine-tune the plain release."
            if broken
            else "the releases lie close together, so the diff may carry over."
        )
    )
    return Precheck(
        previous_base=str(prev.path),
        base=str(new.path),
        diff=str(df.path),
        overall=overall,
        groups={g: s.shift() for g, s in sorted(sums.items())},
        threshold=threshold,
        lineage_broken=broken,
        reason=reason,
    )


def _float64(a: np.ndarray) -> np.ndarray:
    """A read chunk's values in float64, flat."""
    out = np.empty(a.size, dtype=np.float64)
    kernels.widen(a.reshape(-1), out)
    return out


def _chunks(reader: TensorReader, infos: tuple[TensorInfo, ...]) -> Iterator[tuple[np.ndarray, ...]]:
    """Row chunks of the same rows of each tensor (the common leading rows where their row counts differ)."""
    rows = min(i.rows for i in infos)
    step = max(1, CHUNK_ELEMENTS // max(1, infos[0].row_numel))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        yield tuple(reader.read_rows(i, start, stop) for i in infos)
