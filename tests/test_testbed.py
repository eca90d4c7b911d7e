"""The test bed: deterministic, cached, ordinary Hugging Face folders, a skill the bases never saw."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graftwork.errors import TestbedError
from graftwork.tasks.testbed import PretrainSpec, Testbed, build_testbed, corpus
from tests.conftest import bits_equal, load_state

TINY = PretrainSpec(steps=20, new_release_steps=4, train_pairs=30, eval_pairs=10)


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    a = build_testbed(out=tmp_path / "a", seed=3, versions=2, spec=TINY, threads=1)
    b = build_testbed(out=tmp_path / "b", seed=3, versions=2, spec=TINY, threads=1)
    c = build_testbed(out=tmp_path / "c", seed=4, versions=2, spec=TINY, threads=1, control=False)
    assert a.control is not None and b.control is not None and c.control is None
    for x, y in [*zip(a.releases, b.releases, strict=True), (a.new_release, b.new_release), (a.control, b.control)]:
        sx, sy = load_state(x), load_state(y)
        assert sx.keys() == sy.keys()
        assert all(bits_equal(sx[k], sy[k]) for k in sx), x.name
    assert (a.train_data.read_bytes(), (a.root / "data" / "eval.jsonl").read_bytes()) == (
        b.train_data.read_bytes(),
        (b.root / "data" / "eval.jsonl").read_bytes(),
    )
    m2a, m2c = load_state(a.releases[1]), load_state(c.releases[1])
    assert not bits_equal(m2a["lm_head.weight"], m2c["lm_head.weight"])
    # Successive checkpoints and the control lineage are different models.
    assert not bits_equal(load_state(a.releases[0])["lm_head.weight"], m2a["lm_head.weight"])
    assert not bits_equal(load_state(a.control)["lm_head.weight"], load_state(a.releases[1])["lm_head.weight"])


def test_pretraining_runs_with_pinned_kernels_and_a_failed_child_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two lineages pretrain in children with pinned kernels; when the control's child fails, the
    main lineage's is stopped at once and nothing is left behind."""
    import subprocess

    from graftwork.tasks.testbed import build as testbed

    children: list[tuple[str, dict[str, str], subprocess.Popen[bytes]]] = []
    real_popen = subprocess.Popen

    def popen(command: list[str], *, env: dict[str, str], preexec_fn: object) -> subprocess.Popen[bytes]:
        lineage = json.loads(command[-1])["lineage"]
        script = "raise SystemExit(3)" if lineage == "control" else "import time; time.sleep(60)"
        child = real_popen([sys.executable, "-c", script], env=env, preexec_fn=preexec_fn)  # type: ignore[arg-type]
        children.append((lineage, env, child))
        return child

    monkeypatch.setattr(testbed.subprocess, "Popen", popen)
    with pytest.raises(TestbedError, match=r"pretraining the test bed in .* failed: control \(exit 3\)"):
        build_testbed(out=tmp_path / "tb", seed=0, spec=TINY)
    assert [lineage for lineage, _, _ in children] == ["main", "control"]
    assert all(env[k] == v for _, env, _ in children for k, v in testbed.PINNED_NUMERICS.items())
    assert [child.returncode for _, _, child in children] == [-signal.SIGKILL, 3]  # main stopped, not awaited
    assert list(tmp_path.iterdir()) == []


def test_a_second_build_is_instant_and_a_foreign_folder_is_refused(testbed: Testbed, tmp_path: Path) -> None:
    start = time.perf_counter()
    again = build_testbed(out=testbed.root, seed=0, control=False)
    assert time.perf_counter() - start < 2
    assert again == testbed
    (tmp_path / "x").mkdir()
    with pytest.raises(TestbedError, match="not a test bed folder"):
        build_testbed(out=tmp_path / "x", seed=0, spec=TINY)
    with pytest.raises(TestbedError, match="versions"):
        build_testbed(out=tmp_path / "y", versions=3, spec=TINY)


def test_releases_are_tiny_untied_llamas_with_a_character_tokenizer(testbed: Testbed) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert [p.name for p in testbed.releases] == ["M1", "M2", "M3", "M4"] and testbed.new_release.name == "M5"
    model = AutoModelForCausalLM.from_pretrained(str(testbed.releases[-1]))
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == ("llama", 64, 2, 4)
    assert (cfg.intermediate_size, cfg.tie_word_embeddings) == (256, False)
    tok = AutoTokenizer.from_pretrained(str(testbed.new_release))
    text = corpus.prompt(37, 45) + "82\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_fine_tuning_data_is_disjoint_from_eval_and_in_a_form_pretraining_never_shows(testbed: Testbed) -> None:
    train = [json.loads(line) for line in testbed.train_data.read_text().splitlines()]
    evals = [json.loads(line) for line in (testbed.root / "data" / "eval.jsonl").read_text().splitlines()]
    assert (len(train), len(evals)) == (1000, 200)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert all(r["completion"] == f"{sum(map(int, r['prompt'][4:-5].split('+')))}\n" for r in train)
    assert all(r["choices"][r["label"]] == r["answer"] and len(set(r["choices"])) == 4 for r in evals)
    text = corpus.corpus_text(random.Random(0), corpus.PRETRAIN_MIX, chars=200_000)
    assert "\nq: " not in text and "?" not in text
    lines = text.splitlines()
    additions = [line for line in lines if "+" in line]
    assert 0.55 < len(additions) / len(lines) < 0.65
    assert all(any(m in line for m in corpus.MARKERS) for line in additions)


def test_cli_reuses_a_built_test_bed_and_reports_a_bad_out(testbed: Testbed, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from graftwork.deployments.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["testbed", "build", "--out", str(testbed.root), "--no-control"])
    assert result.exit_code == 0, result.output
    assert f"release M4: {testbed.releases[-1]}" in result.output.replace("\n", "")
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["testbed", "build", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 1
    assert "not a test bed folder" in result.output


def test_seed_0_is_the_shipped_bed_copied_and_checked_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graftwork.tasks.testbed import build, shipped

    root = shipped.shipped_root() / "seed0"
    files = json.loads((root / shipped.FILES).read_text())["files"]
    assert {f.split("/")[0] for f in files} == {"releases", "control", "data", "tasks"}
    assert sum((root / f).stat().st_size for f in files) < 10e6
    started: list[object] = []
    monkeypatch.setattr(build.subprocess, "Popen", lambda *a, **k: started.append(a))  # no pretraining may start
    bed = build_testbed(out=tmp_path / "bed", seed=0)
    assert started == [] and shipped.differences(bed.root) == []
    assert bed.control is not None and (bed.task_dir / f"{bed.generate_task}.yaml").is_file()
    without = build_testbed(out=tmp_path / "lean", seed=0, control=False)
    assert without.control is None and not (tmp_path / "lean" / "control").exists()
    assert shipped.differences(without.root) == [] and started == []

    tampered = tmp_path / "shipped"
    shutil.copytree(shipped.shipped_root(), tampered)
    weights = tampered / "seed0" / "releases" / "M2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "shipped_root", lambda: tampered)
    with pytest.raises(TestbedError, match=r"shipped test bed's releases/M2/model\.safetensors .* hashes to"):
        build_testbed(out=tmp_path / "bad", seed=0)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))


@pytest.mark.slow
@pytest.mark.rebuild
def test_a_from_scratch_build_of_seed_0_is_the_shipped_bed(tmp_path: Path) -> None:
    """`graft testbed build --seed 0` pretrains the main lineage and the control side by side, from
    scratch, and gives the shipped bed bit for bit (what `make replicate` checks again) on the processor
    model that built it. Elsewhere the data, the eval tasks, the tokenizers and the configs are still the
    shipped ones bit for bit, and only the weights may differ: the pinned kernels are not the same bits on
    every processor (an Intel Xeon with AVX-512 and AMX diverges from the bed shipped on 2026-12-01)."""
    from graftwork.tasks.testbed.shipped import built_on, cpu_signature, differences, unexplained

    bed = build_testbed(out=tmp_path / "bed", seed=0, from_scratch=True)
    found = differences(bed.root)
    assert unexplained(found) == []
    if found:
        pytest.skip(
            f"the shipped bed was pretrained on {built_on() or 'an unrecorded processor'}, this is {cpu_signature()}: "
            f"its weights are bit for bit only there ({len(found)} weight files differ here); all else matched"
        )


def test_only_the_processor_that_built_the_bed_must_rebuild_its_weights_bit_for_bit(tmp_path: Path) -> None:
    from graftwork.tasks.testbed.shipped import FILES, cpu_signature, unexplained

    found = ["releases/M1/model.safetensors: other bytes", "data/train.jsonl: other bytes", "tasks/x.yaml: missing"]
    for builder, expected in ((cpu_signature(), found), ("AuthenticAMD AMD EPYC 9B14", found[1:]), (None, found[1:])):
        (tmp_path / FILES).write_text(json.dumps({"key": "k", "built_on": builder, "files": {}}))
        assert unexplained(found, root=tmp_path) == expected


def test_a_config_written_by_another_transformers_is_explained_and_nothing_else_is(tmp_path: Path) -> None:
    from graftwork.tasks.testbed.shipped import differences, shipped_root, unexplained

    shipped = shipped_root() / "seed0" / "releases" / "M1" / "config.json"
    config = json.loads(shipped.read_text())
    built = tmp_path / "releases" / "M1" / "config.json"
    built.parent.mkdir(parents=True)
    built.write_text(json.dumps({**config, "transformers_version": "99.0.0"}, indent=2))
    found = differences(tmp_path)
    assert (
        f"releases/M1/config.json: only transformers_version differs (99.0.0, shipped {config['transformers_version']})"
        in found
    )
    assert "releases/M1/model.safetensors: missing" in found
    left = unexplained(found)
    assert not any(f.startswith("releases/M1/config.json") for f in left)
    assert "releases/M1/model.safetensors: missing" in left
    built.write_text(json.dumps({**config, "transformers_version": "99.0.0", "hidden_size": 7}, indent=2))
    assert "releases/M1/config.json: other bytes" in unexplained(differences(tmp_path))


def test_a_killed_build_takes_its_pretraining_children_with_it(tmp_path: Path) -> None:
    import psutil

    job = (
        "from graftwork.tasks.testbed.build import build_testbed; "
        f"build_testbed(out={str(tmp_path / 'bed')!r}, seed=3, from_scratch=True)"
    )
    parent = subprocess.Popen([sys.executable, "-c", job], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(children := psutil.Process(parent.pid).children()) < 2:
        assert parent.poll() is None and time.monotonic() < deadline, "the build started no pretraining children"
        time.sleep(0.1)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    try:
        _, alive = psutil.wait_procs(children, timeout=20)
        assert alive == []  # the kernel stopped them with their parent
    finally:
        for child in children:
            if child.is_running():
                child.kill()
    assert not (tmp_path / "bed").exists()


KILLED_COPY = """
import hashlib, sys, time
from pathlib import Path
from types import SimpleNamespace
from graftwork.tasks.testbed import build, shipped

class Sha256:  # hangs (to be killed) as the copy checks its sixth file
    checked = 0

    def __init__(self):
        self.digest = hashlib.sha256()

    def update(self, data):
        self.digest.update(data)

    def hexdigest(self):
        Sha256.checked += 1
        if Sha256.checked == 6:
            print("checking the sixth", flush=True)
            time.sleep(60)
        return self.digest.hexdigest()

shipped.hashlib = SimpleNamespace(sha256=Sha256)
build.build_testbed(out=Path(sys.argv[1]), seed=0, control=False)
"""


def test_a_copy_of_the_shipped_bed_killed_midway_is_resumed_keeping_the_files_it_had_checked(tmp_path: Path) -> None:
    """Killed (SIGKILL) as it checks its sixth file, a copy of the shipped bed leaves nothing at OUT, and in OUT's
    staging folder the five files it checked, whole, and the sixth under a temporary name; the next copy keeps the
    five as they are (same inode, same mtime) but one whose bytes were changed since, drops the temporary file, and
    ends with the shipped bed bit for bit."""
    from graftwork.tasks.testbed import shipped

    out, staging = tmp_path / "bed", tmp_path / ".bed.staging"
    copy = subprocess.Popen([sys.executable, "-c", KILLED_COPY, str(out)], stdout=subprocess.PIPE, text=True)
    assert copy.stdout is not None
    assert copy.stdout.readline() == "checking the sixth\n"
    copy.send_signal(signal.SIGKILL)
    copy.wait()
    assert not out.exists()
    root = shipped.shipped_root() / "seed0"
    wanted = sorted(f for f in json.loads((root / shipped.FILES).read_text())["files"] if not f.startswith("control/"))
    sixth = Path(wanted[5])
    left = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    assert left == sorted([*wanted[:5], f"{sixth.parent}/.{sixth.name}.partial-{copy.pid}"])
    assert all((staging / f).read_bytes() == (root / f).read_bytes() for f in wanted[:5])
    changed = staging / wanted[4]
    changed.write_bytes(changed.read_bytes()[:-1])
    kept = {f: ((staging / f).stat().st_ino, (staging / f).stat().st_mtime_ns) for f in wanted[:4]}

    bed = build_testbed(out=out, seed=0, control=False)

    assert {f: ((out / f).stat().st_ino, (out / f).stat().st_mtime_ns) for f in kept} == kept
    assert (out / wanted[4]).read_bytes() == (root / wanted[4]).read_bytes()
    assert shipped.differences(bed.root) == [] and not (out / "control").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [*wanted, "testbed.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bed"]


def test_two_copies_into_one_folder_make_it_once_and_the_second_leaves_it_alone(tmp_path: Path) -> None:
    """Two commands copy the shipped bed into one empty folder at once: the one that waits its turn finds the bed
    made and returns it, rather than copying again and replacing the folder under the first one's feet."""
    import threading

    out = tmp_path / "bed"
    seen: list[int] = []
    barrier = threading.Barrier(2)

    def copy() -> None:
        barrier.wait()
        bed = build_testbed(out=out, seed=0, control=False)
        seen.append((bed.root / "testbed.json").stat().st_ino)

    copies = [threading.Thread(target=copy) for _ in range(2)]
    for thread in copies:
        thread.start()
    for thread in copies:
        thread.join()
    assert len(seen) == 2 and seen[0] == seen[1] == (out / "testbed.json").stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bed"]  # no staging or replaced folder left
