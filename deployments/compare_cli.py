"""`graft compare A B`: two models side by side on the same samples, with paired statistics.

A and B are candidates (`candidate-N`), releases (`release-N`: the bare base) or model folders. A registry
object is compared through its stored evaluation; a folder is evaluated with `--suite FILE` or the track's
suite (`--track`). Two evaluations that were not made alike (their fingerprints differ) are never paired
silently: the row says how they differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .console import open_registry, say, user_errors

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from ..storage import Registry
    from ..tasks.evaluate import Evaluation
    from ..tasks.suite import Suite


def compare(
    a: Annotated[str, typer.Argument(help="candidate-N, release-N or a model folder.")],
    b: Annotated[str, typer.Argument(help="candidate-N, release-N or a model folder.")],
    track: Annotated[
        str | None, typer.Option("--track", "-t", help="Evaluate folders with this track's eval suite.")
    ] = None,
    suite: Annotated[Path | None, typer.Option("--suite", help="Evaluate folders with this suite file.")] = None,
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Paired bootstrap resamples.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="The bootstrap's seed.")] = 0,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Disagreements shown per metric.")] = 3,
) -> None:
    """Per task and metric: A's and B's scores, the paired difference A − B with its 95 % bootstrap interval,
    McNemar's p for 0/1 metrics, how many samples they disagree on, and a few of them."""
    from ..tasks import evidence

    registry = open_registry()
    with user_errors():
        rows = evidence.compare(
            _evaluation(registry, a, track=track, suite=suite),
            _evaluation(registry, b, track=track, suite=suite),
            resamples=resamples,
            seed=seed,
            examples=examples,
        )
    say(evidence.table(rows, a=_name(a), b=_name(b)))


def _name(ref: str) -> str:
    return Path(ref).name if Path(ref).is_dir() else ref


def _evaluation(registry: Registry, ref: str, *, track: str | None, suite: Path | None) -> Evaluation:
    """A registry object's stored evaluation, or a folder evaluated now.

    Raises:
        NotFoundError: `ref` is neither a folder nor a candidate or release of the registry.
        SuiteError: a folder needs a suite and none was given.
        ModelFolderError, EvalBackendError: as `run_evaluation`.
    """
    from ..errors import NotFoundError, SuiteError
    from ..operations import scores
    from ..storage import evals
    from ..storage import registry as rows
    from ..storage.db import session_scope
    from ..storage.models import Candidate, Release

    if Path(ref).is_dir():
        if suite is None and track is None:
            raise SuiteError(
                f"{ref} is a model folder: say how to evaluate it with --suite FILE or --track TRACK.", suite=None
            )
        from ..tasks.evaluate import run_evaluation  # a folder is evaluated now: stored results need no ML stack

        return run_evaluation(model_dir=Path(ref), suite=_suite(registry, track=track, suite=suite))
    with session_scope(registry.engine) as session:
        row = rows.get(session, ref=ref if "-" in ref else f"candidate-{ref}")
        if isinstance(row, Candidate):
            stored = evals.eval_results(session, candidate=row)
        elif isinstance(row, Release):
            stored = evals.base_evaluation(session, release=row)
        else:
            raise NotFoundError(f"{ref} is neither a candidate, a release nor a model folder; compare those.", ref=ref)
        if not stored:
            raise NotFoundError(f"{ref} has no stored evaluation; its recycle run evaluates it.", ref=ref)
        return scores.stored_evaluation(registry, rows=stored)


def _suite(registry: Registry, *, track: str | None, suite: Path | None) -> Suite:
    from ..operations.tracks import load_spec
    from ..tasks.suite import load_suite

    if suite is not None:
        return load_suite(path=suite)
    assert track is not None
    return load_spec(registry, track=track).eval
