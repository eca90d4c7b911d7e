"""Bad input gets one clear sentence and leaves nothing behind: each case is run through the CLI as a
user would, and must exit non-zero with one short error that names the object and the fix, print no
traceback, and write nothing at OUT, in the registry or in the temp dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.tasks.testbed.shipped import shipped_root
from tests.conftest import Family

runner = CliRunner()
BED = shipped_root() / "seed0"


def _fails(*args: object) -> str:
    """Run `graft ARGS`; it must fail with one error line and no traceback. Returns that line."""
    result = runner.invoke(app, [str(a) for a in args])
    output = result.stdout + result.stderr
    assert result.exit_code == 1, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _header(file: Path) -> dict[str, dict[str, object]]:
    (length,) = struct.unpack("<Q", file.read_bytes()[:8])
    return json.loads(file.read_bytes()[8 : 8 + length])  # type: ignore[no-any-return]


def _rewrite_header(file: Path, header: dict[str, dict[str, object]]) -> None:
    """Give a safetensors file another header (its data unchanged)."""
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def test_a_shard_index_that_maps_a_tensor_to_a_number_is_named(bf16_family: Family, tmp_path: Path) -> None:
    ft = _copy(bf16_family.finetuned, tmp_path / "ft")
    index = ft / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["lm_head.weight"] = 5
    index.write_text(json.dumps(data))
    error = _fails("diff", ft, bf16_family.base, "-o", tmp_path / "out")
    assert error == (
        f"error: {index}: weight_map maps tensor 'lm_head.weight' to 5, not to the name of a shard file in {ft}; "
        "fix the index, or save the model again with `save_pretrained`."
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_negative_shape_in_a_safetensors_header_is_refused(bf16_family: Family, tmp_path: Path) -> None:
    """Both models declare [-r, -c] for one tensor (its size still fits the data): before, `graft diff`
    exited 0 with a diff.json listing a tensor its shard did not hold."""
    models = [_copy(m, tmp_path / m.name) for m in (bf16_family.finetuned, bf16_family.base)]
    for model in models:
        index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
        shard = model / index["lm_head.weight"]
        header = _header(shard)
        rows, cols = header["lm_head.weight"]["shape"]  # type: ignore[misc]
        header["lm_head.weight"]["shape"] = [-rows, -cols]
        _rewrite_header(shard, header)
    error = _fails("diff", *models, "-o", tmp_path / "out")
    assert error.startswith(f"error: {models[0]}/") and error.endswith(
        f": tensor 'lm_head.weight' declares the shape [{-rows}, {-cols}], with a negative dimension; the file is "
        "corrupt."
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_command_leaves_no_folders_it_made_for_its_output(bf16_family: Family, tmp_path: Path) -> None:
    error = _fails("diff", tmp_path / "missing", bf16_family.base, "-o", tmp_path / "a" / "b" / "c")
    assert "missing is not a model folder" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def made_diff(bf16_family: Family, tmp_path: Path) -> Path:
    result = runner.invoke(app, ["diff", str(bf16_family.finetuned), str(bf16_family.base), "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    return tmp_path / "d"


def _manifest(diff: Path, edit: object) -> Path:
    """A copy of `diff` whose diff.json is `edit` (a callable on the manifest, or a value to write)."""
    bad = _copy(diff, diff.parent / f"bad-{len(list(diff.parent.glob('bad-*')))}")
    manifest = json.loads((bad / "diff.json").read_text())
    (bad / "diff.json").write_text(json.dumps(edit(manifest) if callable(edit) else edit))
    return bad


def _without(*path: str) -> object:
    def edit(manifest: dict[str, object]) -> dict[str, object]:
        parent: dict[str, object] = manifest
        for key in path[:-1]:
            parent = parent[key]  # type: ignore[assignment]
            if key == "tensors":
                parent = next(iter(parent.values()))  # type: ignore[assignment]
        del parent[path[-1]]
        return manifest

    return edit


def test_apply_names_what_is_wrong_in_diff_json(made_diff: Path, bf16_family: Family, tmp_path: Path) -> None:
    listed = _manifest(made_diff, [])
    assert _fails("apply", listed, bf16_family.target, "-o", tmp_path / "out") == (
        f"error: {listed}/diff.json must hold a JSON object, not list; make the diff again with `graft diff`."
    )
    baseless = _manifest(made_diff, _without("base"))
    assert _fails("apply", baseless, bf16_family.target, "-o", tmp_path / "out") == (
        f"error: {baseless}/diff.json is not a valid diff manifest: base: Field required. Make the diff again "
        "with `graft diff`."
    )
    assert not (tmp_path / "out").exists()


def _register_track(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "graft"
    monkeypatch.setenv("GRAFT_DATA_DIR", str(data_dir))
    for name in ("GRAFT_DATABASE_URL", "GRAFT_BLOB_URL"):
        monkeypatch.delenv(name, raising=False)
    track = {
        "name": "t",
        "source": {"kind": "local", "release_dir": str(tmp_path)},
        "finetune": {"data": str(BED / "data" / "train.jsonl")},
        "eval": {"tasks": ["testbed_add"], "task_dirs": [str(BED / "tasks")]},
        "gate": {"metrics": [{"task": "testbed_add", "metric": "exact_match"}]},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(track))
    assert runner.invoke(app, ["track", "add", str(tmp_path / "t.yaml")]).exit_code == 0
    return data_dir


def test_registry_import_names_what_is_wrong_in_diff_json(
    made_diff: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = _register_track(tmp_path, monkeypatch)
    cases = {
        "finetuned: Field required": _without("finetuned"),
        f"tensors.{next(iter(json.loads((made_diff / 'diff.json').read_text())['tensors']))}.l2_norm: Field required": (
            _without("tensors", "l2_norm")
        ),
    }
    for problem, edit in cases.items():
        bad = _manifest(made_diff, edit)
        assert _fails("registry", "import", bad, "--track", "t") == (
            f"error: {bad}/diff.json is not a valid diff manifest: {problem}. Make the diff again with `graft diff`."
        )
    listed = _manifest(made_diff, [])
    assert "must hold a JSON object, not list" in _fails("registry", "import", listed, "--track", "t")
    listing = runner.invoke(app, ["registry", "list", "--kind", "diff"])
    assert "diff-" not in listing.stdout  # nothing was recorded
    assert not any(p.is_file() for p in (data_dir / "blobs").rglob("*"))  # and no blob was stored


def test_track_files_that_are_not_utf8_or_hold_values_that_make_no_sense_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register_track(tmp_path, monkeypatch)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert _fails("track", "add", latin) == f"error: {latin} is not UTF-8 text (byte 9 is b'\\xe9'); save it as UTF-8."
    good = yaml.safe_load((tmp_path / "t.yaml").read_text())
    refused = {
        "recycle.alpha: Input should be a finite number": {"recycle": {"alpha": float("nan")}},
        "recycle.alpha: Input should be a finite number ": {"recycle": {"alpha": float("inf")}},
        "finetune.recipe.learning_rate: Input should be a finite number": {
            "finetune": {**good["finetune"], "recipe": {"learning_rate": float("inf")}}
        },
        "publish.tag_format: Value error, '{track}-{oops}' names {oops}; it may use {release}, {track}": {
            "publish": {"repo": "o/m", "tag_format": "{track}-{oops}"}
        },
    }
    for problem, change in refused.items():
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump({**good, "name": "changed", **change}))
        assert _fails("track", "add", path) == f"error: {path} is not a valid track: {problem.strip()}"
    # A negative α is accepted on purpose: it subtracts Δ (documented in README and RecycleSpec).
    path.write_text(yaml.safe_dump({**good, "name": "undo", "recycle": {"alpha": -1.0}}))
    assert runner.invoke(app, ["track", "add", str(path)]).exit_code == 0
    shown = runner.invoke(app, ["track", "list"]).stdout
    assert "changed" not in shown and "undo" in shown


def test_a_killed_fine_tune_leaves_nothing_in_the_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tune killed outright cannot remove its scratch folder; the next fine-tune does."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    job = (
        "from pathlib import Path; from graftwork.tasks.training.finetune import finetune; "
        "from graftwork.tasks.training.recipe import Recipe; "
        f"finetune(model_dir=Path({str(BED / 'releases' / 'M1')!r}), data=Path({str(BED / 'data' / 'train.jsonl')!r}),"
        f" recipe=Recipe(steps=100000), out_dir=Path({str(tmp_path / 'killed')!r}))"
    )
    child = subprocess.Popen([sys.executable, "-c", job], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(temp.glob("graft-finetune-*")):
        assert child.poll() is None and time.monotonic() < deadline, "the fine-tune never made its scratch folder"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert [p.name.split("-")[2] for p in temp.glob("graft-finetune-*")] == [str(child.pid)]

    from graftwork.tasks.training.finetune import finetune
    from graftwork.tasks.training.recipe import Recipe

    monkeypatch.setattr("tempfile.tempdir", str(temp))
    finetune(
        model_dir=BED / "releases" / "M1",
        data=BED / "data" / "train.jsonl",
        recipe=Recipe(steps=1),
        out_dir=tmp_path / "next",
    )
    assert list(temp.glob("graft-finetune-*")) == []
    assert not (tmp_path / "killed").exists() and (tmp_path / "next" / "config.json").is_file()


def test_watching_an_unknown_track_is_refused_before_any_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = _register_track(tmp_path, monkeypatch)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert _fails("track", "watch", "nosuch") == (
        "error: no track named 'nosuch' in the registry (tracks: t); add it with `graft track add FILE`."
    )
    assert not (data_dir / "prefect").exists()  # no Prefect server was started for it


def test_watching_a_track_whose_release_dir_is_gone_is_one_sentence_before_any_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = _register_track(tmp_path, monkeypatch)
    releases = tmp_path / "releases"
    releases.mkdir()
    track = yaml.safe_load((tmp_path / "t.yaml").read_text())
    (tmp_path / "u.yaml").write_text(
        yaml.safe_dump({**track, "name": "u", "source": {"kind": "local", "release_dir": str(releases)}})
    )
    assert runner.invoke(app, ["track", "add", str(tmp_path / "u.yaml")]).exit_code == 0
    releases.rmdir()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert _fails("track", "watch", "u") == (
        f"error: Release directory {releases} does not exist; create it or fix the track's release_dir."
    )
    assert not (data_dir / "prefect").exists()  # no Prefect server was started for it
