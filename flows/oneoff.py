"""The one-off flows: transfer a Δ onto any model, evaluate any model, and promote or roll back a
track's champion by hand. Models are local folders or Hub refs (`org/name@rev`)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from ..operations import promotions
from ..operations.progress import progress_artifact
from ..operations.report import eval_table
from ..operations.settings import Workspace
from ..operations.tracks import load_spec
from ..tasks import engine
from ..tasks.evaluate import EvalRecord
from ..tasks.evaluate import evaluate as run_suite
from ..tasks.hub import fetch_model
from ..tasks.suite import Suite
from ..terms import EvalSubject


@task
def fetch(model: str) -> Path:
    """A local folder for a model argument (a Hub ref is downloaded, pinned to its sha)."""
    return fetch_model(model)


@task
def score(model: Path, suite: Suite) -> list[EvalRecord]:
    """An eval suite on one model folder."""
    return run_suite(model_dir=model, suite=suite)


@flow(name="transfer", log_prints=True)
def transfer(
    finetuned: str,
    base: str,
    target: str,
    out: str,
    track: str | None = None,
    alpha: float = 1.0,
    data_dir: Path | None = None,
) -> str:
    """target + alpha·(finetuned − base), evaluated against the bare target with `track`'s suite."""
    paths = {role: fetch(ref) for role, ref in (("finetuned", finetuned), ("base", base), ("target", target))}
    with progress_artifact(description="target + α·(finetuned − base)") as report:
        summary = engine.transfer(
            finetuned=paths["finetuned"],
            base=paths["base"],
            target=paths["target"],
            out=Path(out),
            alpha=alpha,
            overwrite=True,
            progress=report,
        )
    if track is not None:
        suite = load_spec(Workspace.at(data_dir).registry(), track=track).eval
        scores = {
            EvalSubject.TRANSFERRED: score(summary.output, suite),
            EvalSubject.BASE: score(paths["target"], suite),
        }
        create_table_artifact(table=eval_table(scores), description=f"{target} + {alpha}·Δ")
    return str(summary.output)


@flow(name="evaluate", log_prints=True)
def evaluate(model: str, track: str, data_dir: Path | None = None) -> list[EvalRecord]:
    """`track`'s eval suite on any model."""
    suite = load_spec(Workspace.at(data_dir).registry(), track=track).eval
    records = score(fetch(model), suite)
    table = eval_table({EvalSubject.CANDIDATE: records})
    create_table_artifact(table=table, description=f"{model} on {track}'s suite")
    return records


@flow(name="promote", log_prints=True)
def promote(track: str, candidate: int, reason: str = "promoted by hand", data_dir: Path | None = None) -> str:
    """Make `candidate` the champion of the track's channel, bypassing the gate (`operations.promotions.promote`);
    the actor recorded is who started the run, as Prefect knows them."""
    moved = promotions.promote(
        Workspace.at(data_dir).registry(),
        candidate=str(candidate),
        track=track,
        actor=promotions.prefect_actor(),
        reason=reason,
    )
    return "\n".join(moved.lines())


@flow(name="rollback", log_prints=True)
def rollback(
    track: str, to: int | None = None, reason: str = "rolled back by hand", data_dir: Path | None = None
) -> str:
    """Put back the champion the current one replaced, or the earlier champion `to` (`operations.promotions.rollback`:
    a new promotion row, walking back along the channel's history); the actor is who started the run."""
    moved = promotions.rollback(
        Workspace.at(data_dir).registry(),
        track=track,
        to=None if to is None else str(to),
        actor=promotions.prefect_actor(),
        reason=reason,
    )
    return "\n".join(moved.lines())
