"""The gate of a recycle run on paired evidence, through Prefect: a champion whose stored evaluation was made
differently is evaluated again (and said so) before the paired rule reads it, the comparison is recorded, every
evaluation's samples stay in the blob store, `graft compare` reads them, and events reach Prefect's API."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter
from sqlalchemy import select
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.flows.watch import watch_releases
from graftwork.operations.settings import Workspace
from graftwork.storage.db import session_scope
from graftwork.storage.models import EvalResult, Promotion
from graftwork.tasks.testbed import Testbed
from graftwork.terms import EvalSubject, GateDecision
from tests.flows.conftest import write_track

pytestmark = pytest.mark.slow


def _graft(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _events_until(wanted: tuple[str, str], *, track: str) -> dict[tuple[str, str], Event]:
    """The track's Graftwork events on the Prefect server, once `wanted` is among them (the server stores events
    in batches, a few seconds after they are sent)."""
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(event=EventNameFilter(prefix=["graftwork."])), limit=50)
        seen = {(e.event, e.resource.id): e for e in page.events if e.payload.get("track") == track}
        if wanted in seen:
            return seen
        assert time.monotonic() < deadline, f"no {wanted} among {sorted(seen)}"
        time.sleep(1)


def test_a_champion_evaluated_differently_is_evaluated_again_then_paired(
    data_dir: Path, testbed: Testbed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_track(tmp_path, testbed, name="paired", releases=(3,), steps=10)
    spec = yaml.safe_load(path.read_text())
    spec["gate"] |= {"non_inferior": {"margin": 1.0, "confidence": 0.95}, "resamples": 500}
    path.write_text(yaml.safe_dump(spec))
    _graft("track", "add", str(path))
    watch_releases(track="paired")
    (tmp_path / "paired-releases" / "02-M4").symlink_to(testbed.releases[3], target_is_directory=True)
    spec["eval"]["batch_size"] = 7
    path.write_text(yaml.safe_dump(spec))
    assert "spec version 2" in _graft("track", "add", str(path))
    with caplog.at_level(logging.INFO):
        watch_releases(track="paired")

    assert (
        "gate: candidate-1's stored evaluation cannot be compared with the candidate's (testbed_add/exact_match: "
        "evaluated differently: batch_size 7 ≠ 64; the candidate's first); evaluating it again"
    ) in caplog.text
    registry = Workspace.from_settings().registry()
    with session_scope(registry.engine) as session:
        decisions = list(session.scalars(select(Promotion).order_by(Promotion.id)))
        assert [(d.decision, d.to_candidate_id) for d in decisions] == [
            (GateDecision.PROMOTE, 1),
            (GateDecision.PROMOTE, 2),
        ]
        (paired,) = [r for r in decisions[1].reasons if "non_inferior" in r]
        assert paired.startswith("pass: non_inferior: testbed_add/exact_match: candidate − champion = ")
        assert "(paired bootstrap, 500 resamples, seed 0, n=40" in paired
        rows = list(session.scalars(select(EvalResult).order_by(EvalResult.id)))
        by = {(r.release_id, r.subject, r.candidate_id): r for r in rows}
        first, again, second = (
            by[(1, EvalSubject.CANDIDATE, 1)],
            by[(2, EvalSubject.CHAMPION, None)],
            by[(2, EvalSubject.CANDIDATE, 2)],
        )
        assert first.model_sha256 == again.model_sha256 and first.setup_sha256 != again.setup_sha256
        assert again.setup_sha256 == second.setup_sha256 and all(r.samples_blob for r in rows)
        assert again.value == pytest.approx(first.value, abs=0.1)
    assert len(list((data_dir / "runs" / "paired").glob("*/*/evals/champion.json"))) == 1

    shown = _graft("compare", "candidate-2", "release-2")
    assert (
        "| task / metric | candidate-2 | release-2 | candidate-2 − release-2 | 95 % CI | McNemar p | n | disagree |"
        in shown
    )
    assert "| 40 |" in shown and "10000 resamples, seed 0" in shown
    unpaired = _graft("compare", "candidate-2", "candidate-1")
    assert "not paired: evaluated differently: batch_size 7 ≠ 64" in unpaired
    assert "0 missing, 0 corrupt" in _graft("registry", "verify")
    assert "removed 0 orphan blob(s)" in _graft("registry", "gc", "--grace-hours", "0")

    seen = _events_until(("graftwork.candidate.promoted", "graftwork.candidate.2"), track="paired")
    assert ("graftwork.candidate.evaluated", "graftwork.candidate.2") in seen
    assert sum(e == "graftwork.release.discovered" for e, _ in seen) == 2
    (promoted,) = [
        e for e in seen.values() if e.event == "graftwork.candidate.promoted" and e.resource.id.endswith(".2")
    ]
    assert promoted.payload["actor"] == "gate" and set(promoted.payload["scores"]) == {"testbed_add/exact_match"}
