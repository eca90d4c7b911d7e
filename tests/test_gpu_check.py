"""`benchmarks/gpu_check.py` and the wheels that carry it to an offline GPU image (`benchmarks/gpu_kit.py`).

A device's minutes are scarce, so the check must work the first time it meets a GPU: its CPU smoke run is
kept working here, a part that fails does not stop the others, and the kit holds what the image lacks.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _smoke(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--params", "2e7", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ | {"CI": ""})


def test_the_smoke_run_fine_tunes_evaluates_and_transfers_on_the_cpu() -> None:
    run = _smoke("--steps", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("device: cpu; torch ")
    assert re.fullmatch(r"fine-tune: 3 bf16 steps of the test bed \(137,792 parameters\) on cpu in .*", lines[1])
    assert re.fullmatch(r"evaluate \(hf on cpu\): testbed_add exact_match = \d\.\d{4} \(n=200\) in .*", lines[2])
    assert lines[3] == "evaluate (vllm): skipped, vLLM is not installed (pip install 'graftwork[vllm]')"
    transfer = re.fullmatch(r"transfer of a .* family: .*; (\d+) of (\d+) tensors equal bit for bit", lines[4])
    assert transfer and transfer[1] == transfer[2], lines[4]


def test_a_part_that_fails_is_reported_and_the_others_still_run() -> None:
    run = _smoke("--steps", "-1")
    assert run.returncode == 1
    assert "fine-tune: FAILED" in run.stdout
    assert "evaluate (" not in run.stdout  # it needs the fine-tune's model
    assert re.search(r"^transfer of a .* tensors equal bit for bit$", run.stdout, re.M)
    assert "steps\n  Input should be greater than or equal to 0" in run.stderr  # the traceback says why
    assert run.stderr.rstrip().endswith("gpu_check: failed: fine-tune (tracebacks above)")


def _kit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_kit", REPO / "benchmarks" / "gpu_kit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kit_takes_the_exact_installed_versions_extras_included() -> None:
    from importlib.metadata import version

    kit = _kit()
    plain = kit.closure(roots=("typepy",), python="3.12")
    assert plain == {name: version(name) for name in ("typepy", "mbstrdecoder", "chardet")}
    with_extra = kit.closure(roots=("typepy[datetime]",), python="3.12")
    assert set(with_extra) - set(plain) == {"python-dateutil", "pytz", "six", "packaging"}


def test_the_kit_leaves_the_images_compiled_packages_and_cuda_libraries_out() -> None:
    needed = _kit().closure(roots=("transformers", "lm_eval"), python="3.12")
    assert {"transformers", "lm-eval", "huggingface-hub", "datasets", "regex", "sacrebleu"} <= set(needed)
    left_out = {"torch", "numpy", "tokenizers", "safetensors", "scikit-learn", "pandas", "pyarrow", "scipy"}
    assert not left_out & set(needed)
    assert not [name for name in needed if name.startswith("nvidia-")]
