"""The one-off flows: transfer a Δ onto any model, evaluate any model, and promote or roll back a
track's champion by hand. Models are local folders or Hub refs (`org/name@rev`)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.progress import progress_artifact
from flows.recycle import load_spec
from flows.registry import open_registry
from flows.report import eval_table
from flows.settings import GraftSettings
from storage import registry as rows
from storage.db import session_scope
from tasks import deltas
from tasks.evaluate import EvalRecord
from tasks.evaluate import evaluate as run_suite
from tasks.hub import fetch_model


@task
def fetch(model: str) -> Path:
    """A local folder for a model argument (a Hub ref is downloaded, pinned to its sha)."""
    return fetch_model(model)


@task
def score(model: Path, track: str) -> list[EvalRecord]:
    """The track's eval suite on one model folder."""
    return run_suite(model_dir=model, suite=load_spec(track=track).eval)


@flow(name="transfer", log_prints=True)
def transfer(finetuned: str, base: str, target: str, out: str, track: str | None = None, alpha: float = 1.0) -> str:
    """target + alpha·(finetuned − base), evaluated against the bare target with `track`'s suite."""
    from prefect.artifacts import create_table_artifact

    paths = {role: fetch(ref) for role, ref in (("finetuned", finetuned), ("base", base), ("target", target))}
    with progress_artifact(key=f"transfer-{Path(out).name}", description="target + α·(finetuned − base)") as report:
        summary = deltas.transfer(
            finetuned=paths["finetuned"],
            base=paths["base"],
            target=paths["target"],
            out=Path(out),
            alpha=alpha,
            overwrite=True,
            progress=report,
        )
    if track is not None:
        scores = {"transferred": score(summary.output, track), "base": score(paths["target"], track)}
        create_table_artifact(table=eval_table(scores), description=f"{target} + {alpha}·Δ")
    return str(summary.output)


@flow(name="evaluate", log_prints=True)
def evaluate(model: str, track: str) -> list[EvalRecord]:
    """`track`'s eval suite on any model."""
    from prefect.artifacts import create_table_artifact

    records = score(fetch(model), track)
    create_table_artifact(table=eval_table({"candidate": records}), description=f"{model} on {track}'s suite")
    return records


@flow(name="promote", log_prints=True)
def promote(track: str, candidate: int, reason: str = "promoted by hand", actor: str = "user") -> str:
    """Make `candidate` the champion of the track's channel, bypassing the gate."""
    spec = load_spec(track=track)
    with session_scope(open_registry(GraftSettings()).engine) as session:
        row = rows.get_track(session, name=track)
        chosen = rows.get_candidate(session, candidate_id=candidate)
        rows.add_promotion(
            session,
            track=row,
            channel=spec.channel,
            decision="promote",
            to_candidate=chosen,
            reasons=[reason],
            actor=actor,
        )
    return f"candidate-{candidate} is the champion of {track}/{spec.channel}"


@flow(name="rollback", log_prints=True)
def rollback(track: str, reason: str = "rolled back by hand", actor: str = "user") -> str:
    """Put back the champion the current one replaced (a new promotion row; nothing is deleted).

    Raises:
        NotFoundError: the channel has no earlier champion to go back to.
    """
    spec = load_spec(track=track)
    with session_scope(open_registry(GraftSettings()).engine) as session:
        row = rows.get_track(session, name=track)
        previous = rows.previous_champion(session, track=row, channel=spec.channel)
        rows.add_promotion(
            session,
            track=row,
            channel=spec.channel,
            decision="rollback",
            to_candidate=previous,
            reasons=[reason],
            actor=actor,
        )
        return f"{rows.public_id(previous)} is again the champion of {track}/{spec.channel}"
