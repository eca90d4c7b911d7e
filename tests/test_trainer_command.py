"""A track's own training command: its spec (placeholders, the files it names and their bytes), how it runs
(streams, the last lines of stderr on failure, a timeout that stops its whole process group) and what its output
must be (a model of the start's layout, or a LoRA adapter merged bit for bit as peft merges it)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from graftwork.errors import (
    ArchitectureMismatchError,
    ModelFolderError,
    ShapeMismatchError,
    TrackError,
    TrainerCommandError,
)
from graftwork.tasks.track import load_track, parse_track, spec_digest
from graftwork.tasks.training.command import run_command
from graftwork.tasks.training.trained import candidate_from, check_trained
from tests.conftest import bits_equal, load_state, perturb, random_state, save_model

SPEC = {
    "name": "own-trainer",
    "source": {"kind": "local", "release_dir": "releases"},
    "finetune": {"data": "train.jsonl", "command": {"argv": ["python", "train.py", "{start}", "{output}", "{data}"]}},
    "eval": {"tasks": ["testbed_add"]},
    "gate": {"metrics": [{"task": "testbed_add", "metric": "exact_match"}]},
}


def write_track(folder: Path, spec: dict[str, object]) -> Path:
    (folder / "train.py").write_text("print('training')\n")
    (folder / "train.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    path = folder / "track.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_command_and_the_bytes_of_its_script_are_the_tracks_spec(tmp_path: Path) -> None:
    track = load_track(write_track(tmp_path, SPEC))
    command = track.finetune.command
    assert command is not None
    script = str(tmp_path / "train.py")
    assert command.argv == ("python", script, "{start}", "{output}", "{data}")
    import hashlib

    assert command.files == {script: hashlib.sha256(b"print('training')\n").hexdigest()}
    command.check_files()
    registered = track.model_dump(mode="json")  # what the registry stores
    before = spec_digest(track)
    (tmp_path / "train.py").write_text("print('training, changed')\n")
    stored = parse_track(registered, base_dir=Path("/"), origin="track own-trainer in the registry")
    assert stored.finetune.command == command  # read back after the change: still the bytes seen at add time
    for read in (command, stored.finetune.command):
        assert read is not None
        with pytest.raises(TrainerCommandError, match=r"train.py changed \(sha256 .*\) since the track was added"):
            read.check_files()
    assert spec_digest(load_track(tmp_path / "track.yaml")) != before  # the changed script: a new spec version
    assert command.formatted(start=Path("/s"), output=Path("/o"), data=Path("/d"), processes=2) == [
        "python", script, "/s", "/o", "/d"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"argv": ["train", "{start}", "{out}"]}, "unknown placeholders ['out']"),
        ({"argv": ["train", "{start}"]}, "the command must name {output} in its argv"),
        ({"argv": []}, "at least 1 item"),
        ({"argv": ["train", "{start}", "{output}", "{"]}, "write a brace as {{ or }}"),
        ({"argv": ["t", "{start}", "{output}"], "timeout_minutes": 0}, "greater than 0"),
    ],
)
def test_a_bad_command_is_refused_with_the_reason(tmp_path: Path, command: dict[str, object], reason: str) -> None:
    spec = {**SPEC, "finetune": {"data": "train.jsonl", "command": command}}
    with pytest.raises(TrackError, match=r"finetune\.command") as refused:
        load_track(write_track(tmp_path, spec))
    assert reason in str(refused.value)


def test_a_recipe_and_a_command_exclude_each_other(tmp_path: Path) -> None:
    spec = {**SPEC, "finetune": {**SPEC["finetune"], "recipe": {"steps": 5}}}  # type: ignore[dict-item]
    with pytest.raises(TrackError, match=r"has a recipe .* or a command .*, not both"):
        load_track(write_track(tmp_path, spec))


def run(tmp_path: Path, script: str, *, timeout_s: float = 60) -> tuple[list[tuple[str, str]], float]:
    lines: list[tuple[str, str]] = []
    (tmp_path / "cmd.py").write_text(textwrap.dedent(script))
    took = run_command(
        argv=[sys.executable, str(tmp_path / "cmd.py")], cwd=tmp_path, env={"PATH": os.environ["PATH"]},
        timeout_s=timeout_s, log=tmp_path / "trainer.log", on_line=lambda stream, line: lines.append((stream, line)),
    )  # fmt: skip
    return lines, took


def test_its_output_is_streamed_and_kept_and_a_failure_ends_with_its_stderr(tmp_path: Path) -> None:
    lines, _ = run(tmp_path, "import sys\nprint('step 1'); print('step 2', file=sys.stderr)\n")
    assert sorted(lines) == [("stderr", "step 2"), ("stdout", "step 1")]
    with pytest.raises(TrainerCommandError) as failed:
        run(tmp_path, "import sys\nfor i in range(30): print(f'warn {i}', file=sys.stderr)\nsys.exit(3)\n")
    message = str(failed.value)
    assert failed.value.status == 3 and message.startswith("the training command exited with status 3; its log: ")
    assert message.endswith("\n".join(f"warn {i}" for i in range(10, 30)))
    assert "warn 9\n" not in message
    assert (tmp_path / "trainer.log").read_text().splitlines()[:2] in (["step 1", "step 2"], ["step 2", "step 1"])


def test_progress_bars_are_lines_and_a_huge_line_is_cut(tmp_path: Path) -> None:
    script = "import sys\nsys.stderr.write('step 1\\rstep 2\\rstep 3\\n')\nprint('x' * 100000)\n"
    lines, _ = run(tmp_path, script)
    assert sorted(lines) == [("stderr", "step 1"), ("stderr", "step 2"), ("stderr", "step 3"), ("stdout", "x" * 4096)]


def test_a_command_past_its_timeout_is_stopped_with_its_whole_process_group(tmp_path: Path) -> None:
    """The command starts a grandchild that ignores SIGTERM; at the timeout both are gone."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    script = f"""
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {stubborn!r}])
        open({str(tmp_path / "pids")!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
    """
    began = time.monotonic()
    with pytest.raises(TrainerCommandError, match=r"ran past its timeout of 0.05 min and was stopped"):
        run(tmp_path, script, timeout_s=3)
    assert time.monotonic() - began < 3 + 10 + 10
    for pid in map(int, (tmp_path / "pids").read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_command_that_cannot_start_says_so(tmp_path: Path) -> None:
    with pytest.raises(TrainerCommandError, match=r"the training command '/no/such/trainer' could not start"):
        run_command(
            argv=["/no/such/trainer"], cwd=tmp_path, env={}, timeout_s=5, log=tmp_path / "l", on_line=lambda *_: None
        )


@pytest.fixture
def start(tmp_path: Path) -> Path:
    return save_model(tmp_path / "start", random_state(seed=0, vocab_size=48, dtype=torch.bfloat16))


def test_an_output_without_weights_or_of_another_architecture_is_refused(start: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match=r"wrote nothing in"):
        check_trained(staged=empty, start=start)
    (empty / "config.json").write_text((start / "config.json").read_text())
    with pytest.raises(ModelFolderError, match=r"output is not a model: .* has no weights"):
        check_trained(staged=empty, start=start)
    other = save_model(tmp_path / "other", random_state(seed=1, vocab_size=48, dtype=torch.bfloat16))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ArchitectureMismatchError, match=r"architectures=\['MistralForCausalLM'\]"):
        check_trained(staged=other, start=start)
    wider = save_model(tmp_path / "wider", random_state(seed=1, vocab_size=50, dtype=torch.bfloat16))
    with pytest.raises(ShapeMismatchError, match=r"tensor 'lm_head.weight' has shape \[50, 32\] in the training"):
        check_trained(staged=wider, start=start)


def test_a_full_model_output_becomes_the_candidate_without_the_trainers_leftovers(start: Path, tmp_path: Path) -> None:
    trained_state = perturb(random_state(seed=0, vocab_size=48, dtype=torch.bfloat16), seed=5, std=0.01)
    staged = save_model(tmp_path / "staged", trained_state, vocab=None)
    (staged / "checkpoint-10").mkdir()
    (staged / "trainer_state.json").write_text("{}")
    check_trained(staged=staged, start=start)
    out = tmp_path / "candidate"
    out.mkdir()
    candidate_from(staged=staged, start=start, out=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in start.iterdir())  # no leftovers
    got = load_state(out)
    assert all(bits_equal(got[name], trained_state[name]) for name in trained_state)


def test_a_lora_adapter_output_is_merged_as_peft_merges_it(start: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(start), dtype=torch.bfloat16),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    staged = tmp_path / "adapter"
    model.save_pretrained(str(staged))
    check_trained(staged=staged, start=start)
    out = tmp_path / "candidate"
    out.mkdir()
    candidate_from(staged=staged, start=start, out=out)
    base = AutoModelForCausalLM.from_pretrained(str(start), dtype=torch.bfloat16)
    reference = PeftModel.from_pretrained(base, str(staged)).merge_and_unload().state_dict()
    got = load_state(out)
    assert set(got) <= set(reference)
    assert all(bits_equal(got[name], reference[name]) for name in got)
    assert any(not bits_equal(got[name], load_state(start)[name]) for name in got if "q_proj" in name)
