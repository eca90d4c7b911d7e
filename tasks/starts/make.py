"""The candidate starts of a release's fine-tune under `recycle.mode: auto`: the plain release and
M_i + α·Δ for each diff and α, written by the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import FinetuneConfigError
from ..engine import apply
from ..io.difffolder import DiffFolder
from ..io.stfile import TensorReader
from .choice import PLAIN, Start


def make_starts(
    *,
    base: Path,
    diffs: Mapping[str, Path | DiffFolder],
    alphas: Sequence[float],
    out: Path,
    readers: Mapping[str, TensorReader] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """The starts to probe: `plain` (the release `base` itself, not copied) first, then `base + α·Δ` for each
    named diff and each α, written to `out/<name>` (`Start.name`, e.g. `iterative@0.75`). Name a diff once even
    when two roles hold it (at the second release, Δ^iter is Δ^dir). A diff opened from the registry comes with
    its reader in `readers` under the same name (`graftwork.operations.diffs.streamed_diff`: it is closed after
    each α and makes its shards again for the next).

    Raises:
        FinetuneConfigError: a diff is named `plain`, or `alphas` is empty.
        What `engine.apply` raises: a diff does not fit `base`, or an output exists and `overwrite` is false.
    """
    if PLAIN in diffs or not alphas:
        raise FinetuneConfigError(
            f"starts need at least one α (got {list(alphas)}) and diffs not named {PLAIN!r} (got {list(diffs)}).",
            field="alphas" if not alphas else "diffs",
        )
    starts = {PLAIN: Path(base)}
    for role, diff in diffs.items():
        for alpha in alphas:
            name = Start(role, alpha).name
            starts[name] = apply(
                diff=diff,
                target=base,
                out=Path(out) / name,
                alpha=alpha,
                overwrite=overwrite,
                reader=(readers or {}).get(role),
            ).output
    return starts
