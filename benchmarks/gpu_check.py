"""The GPU path, checked on a CUDA machine in a few minutes: fine-tuning, evaluation and transfer as workers run them.

1. Fine-tunes the test bed's M4 in bf16 for 200 steps (Graftwork's `finetune`, the Trainer on CUDA) and prints
   tokens/s, MFU (6·N·tokens/s over the GPU's dense bf16 peak) and peak GPU memory.
2. Evaluates the result with lm-eval's HF backend on CUDA, and with vLLM when it is installed.
3. Transfers a synthetic bf16 family of ~1 B parameters with Graftwork's engine (which streams on the CPU,
   as workers run it) and, as its peer in the same run, the same m_t + (m'_s − m_s) on the GPU in fp32
   (load, add, round, save); prints both times, their ratio, and how many weights agree bit for bit.

    python benchmarks/gpu_check.py [--steps 200] [--params 1e9] [--peak-tflops 989]
    python benchmarks/gpu_check.py --device cpu --steps 5 --params 5e7   # a smoke run of the script itself
    bash benchmarks/gpu_check.sh                # on an offline GPU image with PyTorch only (see gpu_kit.py)

Each part runs even when an earlier one failed (the fine-tune needs the test bed, the evaluation the fine-tune's
model); the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from graftwork.tasks import engine  # noqa: E402
from graftwork.tasks.evaluate import evaluate  # noqa: E402
from graftwork.tasks.suite import Suite  # noqa: E402
from graftwork.tasks.testbed import Testbed, build_testbed  # noqa: E402
from graftwork.tasks.testbed.synthetic import FamilySpec, build_family  # noqa: E402
from graftwork.tasks.training.finetune import finetune  # noqa: E402
from graftwork.tasks.training.recipe import Recipe  # noqa: E402

T = TypeVar("T")

VERSIONS_SHOWN = ("transformers", "accelerate", "peft", "lm_eval", "datasets", "pyarrow")
"""Printed first: on a GPU image some come from the image and some from the kit (gpu_kit.py)."""

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks (NVIDIA data sheets), by a substring of the device name."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the check), or cpu for a smoke run of the script")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--params", type=float, default=1e9, help="parameters of the synthetic transfer family")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when its name is not known")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; run it on a GPU worker (or --device cpu for a smoke run).")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    versions = ", ".join(f"{package} {version(package)}" for package in VERSIONS_SHOWN)
    print(f"device: {name}; torch {torch.__version__}; {versions}")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="graft-gpu-check-") as scratch:
        root = Path(scratch)
        peak = _peak(name, args.peak_tflops)
        bed = _part("test bed", failed, lambda: build_testbed(out=root / "testbed", seed=0, control=False))
        if bed is not None:
            tuned = _part(
                "fine-tune", failed, lambda: _finetune(bed, root, steps=args.steps, device=args.device, peak=peak)
            )
            if tuned is not None:
                _part("evaluate", failed, lambda: _evaluate(bed, tuned, device=args.device))
        _part("transfer", failed, lambda: _transfer(root, params=args.params, device=args.device))
    if failed:
        sys.exit(f"gpu_check: failed: {', '.join(failed)} (tracebacks above)")


def _part(what: str, failed: list[str], run: Callable[[], T]) -> T | None:
    """Run one part of the check; a failure is printed and noted, and the other parts still run (a device's
    minutes are scarce: one run should say all it can)."""
    try:
        return run()
    except Exception:
        traceback.print_exc()
        print(f"{what}: FAILED")
        failed.append(what)
        return None


def _peak(name: str, given: float | None) -> float | None:
    if given is not None:
        return given * 1e12
    found = [tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name]
    return found[0] * 1e12 if found else None


def _finetune(bed: Testbed, root: Path, *, steps: int, device: str, peak: float | None) -> Path:
    params = sum(t.numel() for t in _state(bed.releases[-1]).values())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    recipe = Recipe(steps=steps, precision="bf16", deterministic=False, batch_size=64)
    result = finetune(model_dir=bed.releases[-1], data=bed.train_data, recipe=recipe, out_dir=root / "ft")
    peak_memory = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    rate = result.tokens_per_second
    mfu = f"{6 * params * rate / peak:.2%}" if peak else "n/a (pass --peak-tflops)"
    losses = [loss for _, loss in result.loss_curve]
    print(f"fine-tune: {steps} bf16 steps of the test bed ({params:,} parameters) on {result.device} in "
          f"{result.seconds:.1f} s; {rate:,.0f} tokens/s; MFU {mfu}; peak GPU memory {peak_memory:.0f} MiB; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")  # fmt: skip
    return result.out_dir


def _evaluate(bed: Testbed, model: Path, *, device: str) -> None:
    suite = Suite(name="testbed", tasks=(bed.generate_task,), task_dirs=(bed.task_dir,), device=device)
    backends = ["hf"] + (["vllm"] if device == "cuda" and _has("vllm") else [])
    for backend in backends:
        start = time.perf_counter()
        (record,) = evaluate(model_dir=model, suite=suite.model_copy(update={"backend": backend}))
        print(f"evaluate ({backend} on {device}): {record.task} {record.metric} = {record.value:.4f} "
              f"(n={record.n}) in {time.perf_counter() - start:.1f} s")  # fmt: skip
    if "vllm" not in backends:
        print("evaluate (vllm): skipped, vLLM is not installed (pip install 'graftwork[vllm]')")


def _transfer(root: Path, *, params: float, device: str) -> None:
    spec = FamilySpec.with_params(params)
    family = build_family(root / "family", spec=spec)
    start = time.perf_counter()
    engine.transfer(finetuned=family["finetuned"], base=family["base"], target=family["target"], out=root / "engine")
    cpu_seconds = time.perf_counter() - start
    start = time.perf_counter()
    peer = {n: _shift(family, n, device) for n in _state(family["target"])}
    save_file(peer, str(root / "peer.safetensors"))
    peer_seconds = time.perf_counter() - start
    ours = _state(root / "engine")
    same = sum(int(torch.equal(ours[n], peer[n])) for n in peer)
    print(f"transfer of a {spec.params / 1e9:.2f} B-parameter bf16 family: Graftwork's engine (CPU, streaming) "
          f"{cpu_seconds:.1f} s; the same sum on {device} {peer_seconds:.1f} s (ratio engine / {device} "
          f"{cpu_seconds / peer_seconds:.2f}); {same} of {len(peer)} tensors equal bit for bit")  # fmt: skip


def _shift(family: dict[str, Path], name: str, device: str) -> torch.Tensor:
    def load(role: str) -> torch.Tensor:
        return _state(family[role])[name].to(device, torch.float32)

    return (load("target") + (load("finetuned") - load("base"))).to(torch.bfloat16).cpu()


_STATES: dict[Path, dict[str, torch.Tensor]] = {}


def _state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder, loaded by safetensors (once per folder)."""
    if folder not in _STATES:
        _STATES[folder] = {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
    return _STATES[folder]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
