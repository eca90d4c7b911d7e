"""Track files: the shipped examples validate, an invalid one is refused naming the field and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from graftwork.errors import TrackError
from graftwork.tasks.sources import HubRefsSource, LocalSource
from graftwork.tasks.suite import Suite, load_suite
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.track import load_track, parse_track, spec_digest
from graftwork.tasks.training.gpus import GpuLease
from graftwork.terms import RecycleMode

TRACKS = Path(__file__).parents[1] / "deployments" / "tracks"
PAPER = TRACKS.parent / "suites" / "paper.yaml"


@pytest.mark.parametrize("path", sorted(TRACKS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_track_is_valid(path: Path) -> None:
    spec = load_track(path)
    assert spec.name == path.stem
    assert spec.finetune.data.is_absolute()
    assert all(
        stage.data is None or stage.data.is_file() for stage in spec.finetune.recipe.stages if "testbed" in path.stem
    )
    assert all(stage.data is None or stage.data.is_absolute() for stage in spec.finetune.recipe.stages)
    assert spec.gate.metrics, "a gate reads at least one metric"


@pytest.mark.parametrize(
    "name", ["llama-3-8b-instruct", "llama-3-8b-dpo", "llama-3-8b-turkish", "olmo-2-7b-checkpoints"]
)
def test_the_hub_tracks_evaluate_the_papers_suite_on_the_gpu(name: str) -> None:
    spec = load_track(TRACKS / f"{name}.yaml")
    chat = name != "olmo-2-7b-checkpoints"  # OLMo's stage-1 checkpoints are base models
    assert spec.eval == load_suite(path=PAPER).model_copy(
        update={"device": "cuda", "batch_size": "auto", "dtype": "bfloat16", "apply_chat_template": chat}
    )
    assert {m.task for m in spec.gate.metrics} <= set(spec.eval.tasks)


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


def test_stage_data_is_taken_from_the_files_folder_and_short_probes_refuse_stages(tmp_path: Path) -> None:
    stages = [{"kind": "sft"}, {"kind": "dpo", "data": "prefs.jsonl"}]
    staged = {**GOOD, "finetune": {"data": "train.jsonl", "recipe": {"stages": stages}}}
    spec = load_track(_write(tmp_path, staged))
    assert [stage.data for stage in spec.finetune.recipe.stages] == [None, tmp_path / "prefs.jsonl"]
    short = {**staged, "recycle": {"mode": "auto", "probe": {"kind": "short_finetune"}}}
    with pytest.raises(TrackError) as err:
        load_track(_write(tmp_path, short))
    assert str(err.value).endswith(
        "is not a valid track: track: Value error, recycle.probe short_finetune trains each start with a share of the "
        "recipe's steps, and a staged recipe's stages have steps of their own; use probe kind zero_shot or "
        "heldout_loss with stages"
    )


def test_a_stored_spec_reads_back_as_itself_and_its_version_leaves_defaults_out(tmp_path: Path) -> None:
    plain = load_track(_write(tmp_path, GOOD))
    auto = {**GOOD, "recycle": {"mode": "auto", "probe": {"kind": "heldout_loss", "alphas": [1.0]}}}
    gated = {**auto, "gate": {**GOOD["gate"], "approval": "required", "resamples": 500}}  # type: ignore[dict-item]
    spec = load_track(_write(tmp_path, gated))
    dumped = spec.model_dump(mode="json")
    assert dumped["recycle"]["probe"]["alphas"] == [1.0]
    assert (dumped["gate"]["approval"], dumped["gate"]["resamples"]) == ("required", 500)
    assert parse_track(dumped, base_dir=tmp_path, origin="stored") == spec
    assert spec_digest(parse_track(dumped, base_dir=tmp_path, origin="stored")) == spec_digest(spec)
    assert spec_digest(spec) != spec_digest(plain)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "bad name!"}, "name: Value error, use letters, digits"),
        (
            {"source": {"kind": "ftp"}},
            "source: Input tag 'ftp' found using 'kind' does not match any of the expected tags",
        ),
        ({"recycle": {"mode": "sideways"}}, "recycle.mode: Input should be 'iterative', 'source', 'none' or 'auto'"),
        (
            {"recycle": {"mode": "auto"}},
            "recycle: Value error, the zero_shot probe scores each start on a probe suite: set recycle.probe_suite",
        ),
        (
            {"recycle": {"mode": "auto", "probe_suite": {"tasks": ["y", "x"]}}},
            "track: Value error, recycle.probe_suite scores starts on ['x'], which the gate evaluates too",
        ),
        (
            {"recycle": {"mode": "auto", "probe": {"kind": "heldout_loss", "alphas": [0.5, 3]}}},
            "recycle.probe.alphas: Value error, alphas [3.0] are out of range: each α must be in (0, 2]",
        ),
        (
            {"finetune": {"data": "d.jsonl", "recipe": {"steps": -1}}},
            "finetune.recipe.steps: Input should be greater than",
        ),
        ({"gate": {"metrics": []}}, "gate.metrics: Tuple should have at least 1 item"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        (
            {"eval": {"tasks": ["x"], "batch_size": 0}},
            "eval.batch_size: Value error, 0 is no batch size: write a whole number of at least 1, auto, or auto:N",
        ),
        (
            {"eval": {"tasks": ["x"], "device": "tpu"}},
            "eval.device: String should match pattern '^(auto|cpu|cuda(:[0-9]+)?)$'",
        ),
    ],
)
def test_an_invalid_track_names_the_field_and_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(TrackError, match="is not a valid track: ") as caught:
        load_track(_write(tmp_path, {**GOOD, **change}))
    assert message in str(caught.value)


def test_eval_can_name_a_suite_file_whose_fields_the_track_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "s.yaml").write_text("name: s\ntasks: [x, y]\ntask_dirs: [local]\nlimit: 5\n")
    (tmp_path / "tracks").mkdir()
    eval_ = {"suite": "../suites/s.yaml", "device": "cuda", "batch_size": "auto:2", "backend": "vllm", "limit": 10}
    spec = load_track(_write(tmp_path / "tracks", {**GOOD, "eval": eval_}))
    assert spec.eval == Suite(
        name="s",
        tasks=("x", "y"),
        task_dirs=(tmp_path / "tracks" / ".." / "suites" / "local",),
        limit=10,
        device="cuda",
        batch_size="auto:2",
        backend="vllm",
    )
    stored = spec.model_dump(mode="json")  # what the registry keeps: the whole suite, not the file's name
    assert parse_track(stored, base_dir=Path("/"), origin="stored") == spec
    monkeypatch.chdir(tmp_path)  # the same file named by a relative path: the suite's folders are the same
    assert load_track(Path("tracks") / "t.yaml").eval.task_dirs == spec.eval.task_dirs


def test_a_missing_suite_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {**GOOD, "eval": {"suite": "nope.yaml"}})
    with pytest.raises(TrackError) as caught:
        load_track(path)
    assert str(caught.value) == (
        f"{path}: eval.suite: suite file {tmp_path / 'nope.yaml'} cannot be used: [Errno 2] No such file or "
        f"directory: '{tmp_path / 'nope.yaml'}'. Fix the file and try again."
    )


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
    from prefect.logging import disable_run_logger

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
    with disable_run_logger():  # the task's body, called outside a flow run
        out = recycle.fine_tune.fn(plan, testbed.releases[0], spec, GpuLease())
    report = json.loads((plan.work / "finetune.json").read_text())
    assert (report["out_dir"], report["processes"]) == (str(out), 2)
    assert [step for step, _ in report["loss_curve"]] == [1, 2]
    assert json.loads((plan.work / "recipe.json").read_text()) == spec.finetune.recipe.model_dump(mode="json")
