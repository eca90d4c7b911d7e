"""`recycle.mode: auto` through the flow: the first release is fine-tuned plain; the next is pre-checked, its
starts (M_i, M_i + α·Δ) probed and the best fine-tuned, the choice recorded with the candidate, shown by
`graft registry show` and drawn as an artifact; a release from another initialisation fails the pre-check
and is fine-tuned plain without a probe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy import select
from transformers import AutoConfig, AutoModelForCausalLM
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.flows.watch import watch_releases
from graftwork.operations.settings import Workspace
from graftwork.storage.db import session_scope
from graftwork.storage.models import Candidate, Diff
from graftwork.tasks.starts.choice import StartRecord
from graftwork.tasks.testbed import Testbed
from graftwork.terms import RecycleMode
from tests.flows.conftest import write_track

pytestmark = pytest.mark.slow


def _other_initialisation(model: Path, out: Path) -> Path:
    """A model of `model`'s architecture and tokenizer, initialised from another seed: no lineage with it."""
    torch.manual_seed(12345)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).save_pretrained(out)
    for file in model.iterdir():
        if "token" in file.name or file.name.endswith(".model"):
            shutil.copy(file, out / file.name)
    return out


def test_auto_probes_the_starts_records_why_and_falls_back_when_the_lineage_broke(
    data_dir: Path, testbed: Testbed, tmp_path: Path
) -> None:
    path = write_track(tmp_path, testbed, name="auto", releases=(2, 3), mode="auto", steps=10)
    spec = yaml.safe_load(path.read_text())
    spec["recycle"] |= {"probe": {"alphas": [0.5, 1.0], "kind": "heldout_loss", "examples": 20}}
    path.write_text(yaml.safe_dump(spec))
    assert CliRunner().invoke(app, ["track", "add", str(path)]).exit_code == 0
    control = _other_initialisation(testbed.releases[2], tmp_path / "control")
    (tmp_path / "auto-releases" / "03-C").symlink_to(control, target_is_directory=True)

    done = watch_releases(track="auto")
    assert done.failed is None and len(done.started) == 3

    with session_scope(Workspace.from_settings().registry().engine) as session:
        first, second, third = session.scalars(select(Candidate).order_by(Candidate.id))
        diffs = {d.candidate_id: d.id for d in session.scalars(select(Diff))}
        assert (first.mode, first.source_diff_id, first.start_choice) == (RecycleMode.NONE, None, None)

        assert second.start_choice is not None and third.start_choice is not None
        choice = StartRecord.model_validate(second.start_choice)
        assert choice.precheck is not None and choice.precheck.lineage_broken is False
        assert choice.probe is not None
        scores = {name: s.score for name, s in choice.probe.scores.items()}
        assert list(scores) == ["plain", "iterative@0.5", "iterative@1"]  # Δ^source is Δ^iter at release 2
        assert choice.chosen == max(scores, key=lambda name: scores[name])
        assert choice.probe.kind == "heldout_loss" and choice.probe.probe_steps == 0
        if choice.start.role is None:
            assert (second.mode, second.source_diff_id) == (RecycleMode.NONE, None)
        else:
            got = (second.mode, second.alpha, second.source_diff_id)
            assert got == (RecycleMode.ITERATIVE, choice.start.alpha, diffs[first.id])
        work = Path(second.model_uri).parent
        assert sorted(p.name for p in (work / "starts").iterdir()) == (
            [] if choice.chosen == "plain" else [choice.chosen]
        )  # the other starts' disk is freed

        broken = StartRecord.model_validate(third.start_choice)
        assert broken.precheck is not None and broken.precheck.lineage_broken is True
        assert broken.precheck.overall.base_shift > broken.precheck.threshold
        assert broken.probe is None and broken.chosen == "plain"
        assert (third.mode, third.source_diff_id) == (RecycleMode.NONE, None)

    shown = CliRunner().invoke(app, ["registry", "show", f"candidate-{second.id}"]).stdout.splitlines()
    assert shown[3] == f"  auto chose {choice.chosen}: {choice.why}"
    assert shown[4].startswith("  pre-check: the base moved ")
    assert shown[5] == "  probe heldout_loss: " + ", ".join(f"{n} {s:.4f}" for n, s in scores.items())
    said = CliRunner().invoke(app, ["registry", "show", f"candidate-{third.id}"]).stdout
    assert "lineage broken above 0.8: yes" in said

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="auto-02-m3")))
        keys = {a.key for a in found if a.key is not None}
    assert any(key.startswith("auto-02-m3") and key.endswith("-start") for key in keys), keys
