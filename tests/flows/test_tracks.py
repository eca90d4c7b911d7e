"""Track files: the shipped examples validate, an invalid one is refused naming the field and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from graftwork.errors import TrackError
from graftwork.flows.tracks import HubRefsSource, LocalSource, load_track
from graftwork.tasks.testbed import Testbed
from graftwork.terms import RecycleMode

TRACKS = Path(__file__).parents[2] / "deployments" / "tracks"


@pytest.mark.parametrize("path", sorted(TRACKS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_track_is_valid(path: Path) -> None:
    spec = load_track(path)
    assert spec.name == path.stem
    assert spec.finetune.data.is_absolute()
    assert spec.gate.metrics, "a gate reads at least one metric"


def test_the_olmo_track_watches_branches_of_one_repo() -> None:
    spec = load_track(TRACKS / "olmo-2-7b-checkpoints.yaml")
    assert spec.source == HubRefsSource(
        kind="hub-refs", repo="allenai/OLMo-2-1124-7B", ref_pattern="stage1-step*-tokens*"
    )


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {
    "name": "t",
    "source": {"kind": "local", "release_dir": "releases"},
    "finetune": {"data": "train.jsonl"},
    "eval": {"tasks": ["x"]},
    "gate": {"metrics": [{"task": "x", "metric": "acc"}]},
}


def test_relative_paths_are_taken_from_the_files_folder(tmp_path: Path) -> None:
    spec = load_track(_write(tmp_path, GOOD))
    assert spec.source == LocalSource(kind="local", release_dir=tmp_path / "releases")
    assert spec.finetune.data == tmp_path / "train.jsonl"
    assert (spec.recycle.mode, spec.recycle.alpha, spec.channel) == ("iterative", 1.0, "production")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "bad name!"}, "name: Value error, use letters, digits"),
        (
            {"source": {"kind": "ftp"}},
            "source: Input tag 'ftp' found using 'kind' does not match any of the expected tags",
        ),
        ({"recycle": {"mode": "sideways"}}, "recycle.mode: Input should be 'iterative', 'source' or 'none'"),
        (
            {"finetune": {"data": "d.jsonl", "recipe": {"steps": -1}}},
            "finetune.recipe.steps: Input should be greater than",
        ),
        ({"gate": {"metrics": []}}, "gate.metrics: Tuple should have at least 1 item"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_track_names_the_field_and_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(TrackError, match="is not a valid track: ") as caught:
        load_track(_write(tmp_path, {**GOOD, **change}))
    assert message in str(caught.value)


def test_a_missing_or_non_yaml_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrackError, match=r"cannot read track file .*nope\.yaml: No such file"):
        load_track(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(TrackError, match=r"bad\.yaml is not YAML"):
        load_track(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(TrackError, match="a track is a mapping of fields, not list"):
        load_track(tmp_path / "list.yaml")


@pytest.mark.slow
def test_a_multi_process_track_fine_tunes_through_accelerate(tmp_path: Path, testbed: Testbed) -> None:
    """A track asking for 2 DDP processes fine-tunes under `accelerate launch` with the shipped ddp.yaml, for
    real (gloo on the CPU): the candidate is written once and the run's report says 2 processes."""
    from graftwork.flows import recycle
    from graftwork.tasks.hub import ReleaseRef

    recipe = {"steps": 2, "batch_size": 4}
    launch = {"processes": 2, "distributed": "ddp"}
    spec = load_track(
        _write(tmp_path, {**GOOD, "finetune": {"data": str(testbed.train_data), "recipe": recipe, "launch": launch}})
    )
    plan = recycle.Plan(
        "t", 1, ReleaseRef(repo_id="o/m", revision="a" * 40), None, "none: plain", RecycleMode.NONE, tmp_path / "work"
    )
    plan.work.mkdir()
    out = recycle.fine_tune.fn(plan, testbed.releases[0], spec, [])
    report = json.loads((plan.work / "finetune.json").read_text())
    assert (report["out_dir"], report["processes"]) == (str(out), 2)
    assert [step for step, _ in report["loss_curve"]] == [1, 2]
    assert json.loads((plan.work / "recipe.json").read_text()) == spec.finetune.recipe.model_dump(mode="json")
