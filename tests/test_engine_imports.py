"""The engine commands do their arithmetic without torch: `graft diff`, `apply` and `transfer`, each run in a fresh
interpreter as a user's shell starts it, load none of the training and evaluation stack (torch, transformers, ...),
and what they write is what the engine writes in this process, tensor for tensor and byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from graftwork.tasks import engine
from tests.conftest import Family
from tests.service import child_env
from tests.test_readonly_imports import PROBE


def _weights(folder: Path) -> dict[str, tuple[object, bytes]]:
    """Each shard's tensor entries and data (its metadata says when and from where it was made)."""
    shards = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        length = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + length])
        header.pop("__metadata__")
        shards[path.name] = (header, raw[8 + length :])
    return shards


def test_diff_apply_and_transfer_load_no_ml_stack(bf16_family: Family, tmp_path: Path) -> None:
    f, b, t = (str(p) for p in (bf16_family.finetuned, bf16_family.base, bf16_family.target))
    commands = [
        ["transfer", "--finetuned", f, "--base", b, "--target", t, "--out", "carried"],
        ["diff", f, b, "--out", "delta"],
        ["apply", "delta", t, "--out", "applied", "--alpha", "0.5"],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *command], env=child_env(), cwd=tmp_path, capture_output=True, text=True
        )
        loaded = json.loads(done.stderr.strip().splitlines()[-1])
        assert loaded == [], f"`graft {command[0]}` loaded {loaded}:\n{done.stdout}\n{done.stderr}"
        assert f"{command[0]}: wrote" in done.stdout, done.stdout + done.stderr
    engine.transfer(finetuned=bf16_family.finetuned, base=bf16_family.base, target=bf16_family.target,
                    out=tmp_path / "in-process")  # fmt: skip
    engine.apply(diff=tmp_path / "delta", target=bf16_family.target, out=tmp_path / "applied-in-process", alpha=0.5)
    assert _weights(tmp_path / "carried") == _weights(tmp_path / "in-process")
    assert _weights(tmp_path / "applied") == _weights(tmp_path / "applied-in-process")
