"""The engine commands do their arithmetic without torch: `graft diff`, `apply` and `transfer`, each run in a fresh
interpreter as a user's shell starts it, load none of the training and evaluation stack (torch, transformers, ...),
also where the fine-tuned model's tokenizer files differ from its base's (a chat template), so that the vocabulary
is read to check it; and what they write is what the engine writes in this process, byte for byte."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graftwork.tasks import engine
from graftwork.tasks.engine import kernels
from graftwork.tasks.io.stfile import read_header
from tests.conftest import Family
from tests.service import GRAFT, child_env
from tests.test_readonly_imports import PROBE


def _weights(folder: Path) -> dict[str, dict[str, tuple[str, tuple[int, ...], bytes]]]:
    """Each shard's tensors: dtype, shape and bytes (its metadata says when and from where it was made)."""
    shards = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        infos, _ = read_header(path)
        shards[path.name] = {i.name: (i.dtype, i.shape, raw[i.start : i.start + i.nbytes]) for i in infos}
    return shards


def test_diff_apply_and_transfer_load_no_ml_stack(bf16_family: Family, tmp_path: Path) -> None:
    tuned = tmp_path / "tuned"
    shutil.copytree(bf16_family.finetuned, tuned)
    config = json.loads((tuned / "tokenizer_config.json").read_text())
    (tuned / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    f, b, t = (str(p) for p in (tuned, bf16_family.base, bf16_family.target))
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
    engine.transfer(finetuned=tuned, base=bf16_family.base, target=bf16_family.target, out=tmp_path / "in-process")
    engine.apply(diff=tmp_path / "delta", target=bf16_family.target, out=tmp_path / "applied-in-process", alpha=0.5)
    assert _weights(tmp_path / "carried") == _weights(tmp_path / "in-process")
    assert _weights(tmp_path / "applied") == _weights(tmp_path / "applied-in-process")


def test_transfer_runs_from_a_read_only_install_with_a_read_only_home(bf16_family: Family, tmp_path: Path) -> None:
    """Where numba may write no cache (the package's folder and the home both read-only), the engine compiles its
    kernels in the process instead of failing to import. The package folder is made read-only for the child
    with a bind mount in a mount namespace of its own."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine gives no mount namespace (unshare -m) to make the package read-only in")
    engine_dir = Path(kernels.__file__).parent
    f, b, t = (str(p) for p in (bf16_family.finetuned, bf16_family.base, bf16_family.target))
    transfer = shlex.join([str(GRAFT), "transfer", "--finetuned", f, "--base", b, "--target", t, "--out", "carried"])
    script = f"mount --bind -o ro {shlex.quote(str(engine_dir))} {shlex.quote(str(engine_dir))} && {transfer}"
    env = {k: v for k, v in child_env(HOME="/proc/no-home").items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "transfer: wrote" in done.stdout
    engine.transfer(finetuned=bf16_family.finetuned, base=bf16_family.base, target=bf16_family.target,
                    out=tmp_path / "in-process")  # fmt: skip
    assert _weights(tmp_path / "carried") == _weights(tmp_path / "in-process")
