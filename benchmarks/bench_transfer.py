"""Benchmark `graft transfer` against mergekit's task_arithmetic and the naive transformers approach.

Graftwork (with and without `--fsync`), mergekit and the naive approach compute m_t + (m'_s − m_s)
on one synthetic Llama-shaped bf16 family, in one run, each in a fresh process with a warm page
cache. The benchmark checks that the outputs agree and prints wall time, peak RSS, their ratios to
Graftwork, and how close Graftwork comes to the I/O limit (bytes read and written ÷ measured memory
bandwidth): its throughput in GB/s, for the whole command and for the transfer itself (what the command says it
took), and each as a fraction of the copy bandwidth measured in the same run.

    python benchmarks/bench_transfer.py [--params 5e8] [--skip-mergekit] [--skip-naive]

mergekit is installed into its own virtual environment under benchmarks/.cache on first use.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graftwork.tasks.io.checkpoints import open_model_folder
from graftwork.tasks.io.stfile import TensorReader
from graftwork.tasks.testbed.synthetic import FamilySpec, build_family

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
MERGEKIT_VENV = CACHE / "mergekit-venv"

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
f, b, t, out = sys.argv[1:5]
load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16)
mt = load(t)
sf, sb = load(f).state_dict(), load(b).state_dict()
with torch.no_grad():
    for k, v in mt.state_dict().items():
        v.copy_(v.float() + (sf[k].float() - sb[k].float()))
mt.save_pretrained(out)
"""


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    peak_rss: int
    out: Path
    own_seconds: float | None = None
    """What the tool says its own work took (graft transfer prints it), without starting Python and imports."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=5e8, help="parameters per model (default 5e8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool; the best is reported")
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--cold", action="store_true",
        help="drop the page cache before every run (root), so that the disk is the limit, and time `cat` of the "
        "three inputs plus writing the output's bytes as the peer",
    )  # fmt: skip
    args = parser.parse_args()

    spec = FamilySpec.with_params(args.params)
    root = CACHE / f"family-{spec.params}-{args.seed}"
    print(f"family: {spec.params / 1e6:.0f} M parameters per model, bf16, {spec.num_layers} layers, in {root}")
    t0 = time.perf_counter()
    fam = build_family(root, spec=spec, seed=args.seed, max_shard_bytes=2**30)
    print(f"  ready in {time.perf_counter() - t0:.1f} s")
    model_bytes = sum(p.stat().st_size for p in fam["base"].glob("*.safetensors"))

    tools = {"graftwork": _graftwork_cmd, "graftwork --fsync": _graftwork_fsync_cmd}
    if not args.skip_mergekit:
        _ensure_mergekit()
        tools["mergekit"] = _mergekit_cmd
    if not args.skip_naive:
        tools["naive"] = _naive_cmd
    if args.cold:
        tools["cat + write"] = _cat_cmd

    runs: dict[str, Run] = {}
    for name, make_cmd in tools.items():
        best: Run | None = None
        for _ in range(args.repeat):
            out = CACHE / f"out-{name.replace(' --', '-')}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            os.sync()  # no tool pays for the write-back of the one before it
            _drop_caches() if args.cold else _warm(fam)
            seconds, rss, said = _measure(make_cmd(fam, out))
            own = re.search(r" in ([0-9.]+) s \(", said) if name.startswith("graftwork") else None
            run = Run(name, seconds, rss, out, float(own.group(1)) if own else None)
            best = run if best is None or run.seconds < best.seconds else best
        assert best is not None
        runs[name] = best
        print(f"  {name:10s} {best.seconds:7.2f} s   peak RSS {best.peak_rss / 2**30:.2f} GiB")

    _check_agreement({name: run for name, run in runs.items() if name != "cat + write"})
    bandwidth = _memory_bandwidth()
    io_bytes = 4 * model_bytes  # three models read, one written
    io_limit = io_bytes / bandwidth
    g = runs["graftwork"]
    print()
    print("| tool | wall s | peak RSS GiB | time ÷ graftwork | RSS ÷ graftwork |")
    print("| --- | --- | --- | --- | --- |")
    for r in runs.values():
        ratios = f"{r.seconds / g.seconds:.2f} | {r.peak_rss / g.peak_rss:.2f}"
        print(f"| {r.name} | {r.seconds:.2f} | {r.peak_rss / 2**30:.2f} | {ratios} |")
    print()
    print(f"memory bandwidth (copy): {bandwidth / 1e9:.1f} GB/s; I/O of a transfer: {io_bytes / 1e9:.2f} GB")
    print(f"I/O limit: {io_limit:.2f} s; graftwork takes {g.seconds / io_limit:.1f}× the I/O limit")
    if "cat + write" in runs:
        print(f"graftwork takes {g.seconds / runs['cat + write'].seconds:.2f}× the time of `cat` of its inputs plus "
              "writing its output's bytes")  # fmt: skip
    for seconds, what in ((g.seconds, "the whole command"), (g.own_seconds, "the transfer itself")):
        if seconds:
            throughput = io_bytes / seconds
            print(f"graftwork, {what}: {seconds:.2f} s, {throughput / 1e9:.2f} GB/s, "
                  f"{throughput / bandwidth:.0%} of the copy bandwidth")  # fmt: skip


def _graftwork_cmd(fam: dict[str, Path], out: Path) -> list[str]:
    graft = Path(sys.executable).parent / "graft"
    return [str(graft), "transfer", "--finetuned", str(fam["finetuned"]), "--base", str(fam["base"]),
            "--target", str(fam["target"]), "-o", str(out)]  # fmt: skip


def _graftwork_fsync_cmd(fam: dict[str, Path], out: Path) -> list[str]:
    return [*_graftwork_cmd(fam, out), "--fsync"]


def _mergekit_cmd(fam: dict[str, Path], out: Path) -> list[str]:
    config = CACHE / "mergekit-task-arithmetic.yml"
    config.write_text(
        textwrap.dedent(f"""\
        merge_method: task_arithmetic
        base_model: {fam["target"]}
        models:
          - model: {fam["finetuned"]}
            parameters: {{weight: 1.0}}
          - model: {fam["base"]}
            parameters: {{weight: -1.0}}
        parameters:
          normalize: false
        dtype: float32
        out_dtype: bfloat16
        """)
    )
    return [str(MERGEKIT_VENV / "bin" / "mergekit-yaml"), str(config), str(out)]


def _cat_cmd(fam: dict[str, Path], out: Path) -> list[str]:
    """The I/O a transfer cannot avoid, done by the shell: read the three inputs, write the output's bytes."""
    inputs = [str(f) for name in ("finetuned", "base", "target") for f in sorted(fam[name].glob("*.safetensors"))]
    size = sum(Path(f).stat().st_size for f in inputs[: len(inputs) // 3])
    script = f'cat "$@" > /dev/null && mkdir -p {shlex.quote(str(out))} && head -c {size} /dev/zero > ' + shlex.quote(
        str(out / "model.bin")
    )
    return ["bash", "-c", script, "cat", *inputs]


def _drop_caches() -> None:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"--cold drops the page cache, which needs root: {e}") from None


def _naive_cmd(fam: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, "-c", NAIVE, str(fam["finetuned"]), str(fam["base"]), str(fam["target"]), str(out)]


def _ensure_mergekit() -> None:
    if (MERGEKIT_VENV / "bin" / "mergekit-yaml").exists():
        return
    print("installing mergekit into", MERGEKIT_VENV)
    subprocess.run([sys.executable, "-m", "venv", str(MERGEKIT_VENV)], check=True)
    pip = str(MERGEKIT_VENV / "bin" / "pip")
    subprocess.run([pip, "install", "--quiet", "torch==2.13.0"], check=True)
    subprocess.run([pip, "install", "--quiet", "mergekit"], check=True)


def _warm(fam: dict[str, Path]) -> None:
    for folder in fam.values():
        for f in folder.glob("*.safetensors"):
            with f.open("rb") as fh:
                while fh.read(1 << 24):
                    pass


def _measure(cmd: list[str]) -> tuple[float, int, str]:
    """Wall time, peak RSS and standard output of a command.

    The peak is the process's own high-water mark (VmHWM), polled every few milliseconds: the
    rusage of a child would also count this benchmark's memory, which a fork copies.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # stderr goes to a file: a pipe nobody reads while polling would stall a chatty tool's progress bars.
    with tempfile.TemporaryFile() as log, tempfile.TemporaryFile() as said:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=said, stderr=log)
        peak = 0
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
                peak = max(peak, int(hwm.split()[1]) * 1024)
            except (OSError, StopIteration):
                pass
            time.sleep(0.003)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {log.read().decode()[-2000:]}")
        said.seek(0)
        return seconds, peak, said.read().decode(errors="replace")


def _check_agreement(runs: dict[str, Run]) -> None:
    """Compare every output with Graftwork's, tensor by tensor: bit-identical fraction and max ULP gap."""
    reference = open_model_folder(runs["graftwork"].out)
    reader = TensorReader()
    for name, run in runs.items():
        if name == "graftwork":
            continue
        other = open_model_folder(run.out)
        assert set(other.tensors) == set(reference.tensors), f"{name} wrote another set of tensors"
        same = total = 0
        max_ulps = 0
        for tensor, info in reference.tensors.items():
            a = reader.read_rows(info, 0, info.rows).reshape(-1).view(np.int16).astype(np.int32)
            o = other.tensors[tensor]
            b = reader.read_rows(o, 0, o.rows).reshape(-1).view(np.int16).astype(np.int32)
            same += int((a == b).sum())
            total += a.size
            max_ulps = max(max_ulps, int(np.abs(a - b).max()))
        print(f"  {name} agrees with graftwork on {same / total:.6%} of elements; max gap {max_ulps} bf16 ulp")
        assert max_ulps <= 1, f"{name} disagrees with graftwork by more than one rounding"
    reader.close()


def _memory_bandwidth() -> float:
    src = np.ones(2**27, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


if __name__ == "__main__":
    main()
