"""Benchmark the diff codec against zipnn and plain zstd on a synthetic delta and on a real engine diff.

Inputs:
- `synthetic`: Δ = bf16(W + N(0, 1e-3)) − W for bf16 W ~ N(0, 0.02), stored as float32 exactly as the
  engine stores it (a safetensors file).
- `synthetic-bf16`: the same Δ rounded to bf16. It is lossy (a few % of the values change), so the
  engine never stores it; it is here to compare with zipnn's published kind of figure.
- `engine`: the diff folder `tasks.engine.diff` writes for a synthetic bf16 fine-tuned/base pair
  (`tasks.synthetic`), every file of it.

For each candidate: ratio against the raw bf16 bytes of Δ (elements × 2), ratio against the bytes of
the input, compression and decompression MB/s of input bytes, and a bit-for-bit round-trip check.
Results are printed as one table and written to benchmarks/results/codec.json.

    python benchmarks/bench_codec.py [--elements 64e6] [--family-params 5e7] [--repeat 2]

zipnn is optional: when it is not installed the benchmark says so and skips it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import zstandard
from safetensors.torch import save_file

from graftwork.tasks.engine import diff
from graftwork.tasks.io.codec import CODEC, DEFAULT_LEVEL, decode_file, encode_file
from graftwork.tasks.testbed.synthetic import FamilySpec, build_family

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
THREADS = os.cpu_count() or 1


@dataclass(frozen=True)
class Row:
    input: str
    candidate: str
    input_bytes: int
    bf16_bytes: int
    stored_bytes: int
    compress_s: float
    decompress_s: float

    def cells(self) -> list[str]:
        return [
            self.input,
            self.candidate,
            f"{self.bf16_bytes / self.stored_bytes:.3f}",
            f"{self.input_bytes / self.stored_bytes:.3f}",
            f"{self.input_bytes / self.compress_s / 1e6:.0f}",
            f"{self.input_bytes / self.decompress_s / 1e6:.0f}",
        ]


Codec = tuple[Callable[[list[Path]], list[bytes]], Callable[[list[bytes]], list[bytes]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=float, default=64e6, help="elements of the synthetic Δ (default 64e6)")
    parser.add_argument("--family-params", type=float, default=5e7, help="parameters of the engine-diff family")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each candidate; the best is reported")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    inputs = {
        "synthetic": _synthetic(int(args.elements), bf16=False),
        "synthetic-bf16": _synthetic(int(args.elements), bf16=True),
        "engine": _engine_diff(args.family_params),
    }
    rows = []
    for name, (files, bf16_bytes) in inputs.items():
        size = sum(p.stat().st_size for p in files)
        print(f"{name}: {len(files)} files, {size / 1e6:.0f} MB, Δ as raw bf16 {bf16_bytes / 1e6:.0f} MB")
        for candidate, codec in _candidates(bf16=name.endswith("bf16")).items():
            rows.append(_measure(name, candidate, codec, files, bf16_bytes=bf16_bytes, repeat=args.repeat))
            print("  " + " | ".join(rows[-1].cells()[1:]))
    print()
    header = ["input", "candidate", "ratio vs raw bf16", "ratio vs input", "compress MB/s", "decompress MB/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    print(f"\n{THREADS} threads; MB/s are MB of input per second; every round trip was checked bit for bit.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "codec.json").write_text(json.dumps({"threads": THREADS, "rows": [asdict(r) for r in rows]}, indent=1))


def _synthetic(n: int, *, bf16: bool) -> tuple[list[Path], int]:
    path = CACHE / f"delta-{n}-{'bf16' if bf16 else 'f32'}.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        w = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
        ft = (w.float() + torch.randn(n, generator=g) * 1e-3).to(torch.bfloat16)
        delta = ft.float() - w.float()
        cols = 4096 if n % 4096 == 0 else 1
        save_file({"delta": (delta.to(torch.bfloat16) if bf16 else delta).reshape(-1, cols)}, str(path))
    return [path], 2 * n


def _engine_diff(params: float) -> tuple[list[Path], int]:
    spec = FamilySpec.with_params(params)
    fam = build_family(CACHE / f"family-{spec.params}-0", spec=spec, seed=0)
    out = CACHE / f"diff-{spec.params}"
    if not (out / "diff.json").exists():
        diff(finetuned=fam["finetuned"], base=fam["base"], out=out, overwrite=True)
    return sorted(p for p in out.rglob("*") if p.is_file()), 2 * spec.params


def _candidates(*, bf16: bool) -> dict[str, Codec]:
    out: dict[str, Codec] = {}
    for level in (DEFAULT_LEVEL, 3):
        out[f"{CODEC} level {level}" + (" (default)" if level == DEFAULT_LEVEL else "")] = _ours(level)
    for level in (1, 3):
        out[f"zstd level {level}"] = _zstd(level)
    try:
        import zipnn  # type: ignore[import-not-found]
    except ImportError:
        print("  zipnn is not installed: skipping it (pip install zipnn to compare)")
    else:
        out["zipnn"] = _zipnn(zipnn, "bfloat16" if bf16 else "float32")
    return out


def _ours(level: int) -> Codec:
    def compress(files: list[Path]) -> list[bytes]:
        blobs = []
        for path in files:
            buf = io.BytesIO()
            encode_file(src=path, dst=buf, level=level)
            blobs.append(buf.getvalue())
        return blobs

    def decompress(blobs: list[bytes]) -> list[bytes]:
        outs = []
        for blob in blobs:
            buf = io.BytesIO()
            decode_file(src=io.BytesIO(blob), dst=buf)
            outs.append(buf.getvalue())
        return outs

    return compress, decompress


def _zstd(level: int) -> Codec:
    def compress(files: list[Path]) -> list[bytes]:
        z = zstandard.ZstdCompressor(level=level, threads=THREADS)
        return [z.compress(p.read_bytes()) for p in files]

    def decompress(blobs: list[bytes]) -> list[bytes]:
        z = zstandard.ZstdDecompressor()
        return [z.decompress(b) for b in blobs]

    return compress, decompress


def _zipnn(zipnn: object, dtype: str) -> Codec:
    """zipnn 0.5.4 overwrites its input buffer and mis-decodes immutable `bytes`: give it fresh bytearrays."""
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=THREADS)  # type: ignore[attr-defined]

    def compress(files: list[Path]) -> list[bytes]:
        return [bytes(z.compress(bytearray(p.read_bytes()))) for p in files]

    def decompress(blobs: list[bytes]) -> list[bytes]:
        return [bytes(z.decompress(bytearray(b))) for b in blobs]

    return compress, decompress


def _measure(name: str, candidate: str, codec: Codec, files: list[Path], *, bf16_bytes: int, repeat: int) -> Row:
    compress, decompress = codec
    originals = [p.read_bytes() for p in files]
    best_c = best_d = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        blobs = compress(files)
        t1 = time.perf_counter()
        outs = decompress(blobs)
        t2 = time.perf_counter()
        if outs != originals:
            raise SystemExit(f"{candidate} did not give back {name} bit for bit")
        best_c, best_d = min(best_c, t1 - t0), min(best_d, t2 - t1)
    return Row(
        input=name,
        candidate=candidate,
        input_bytes=sum(len(o) for o in originals),
        bf16_bytes=bf16_bytes,
        stored_bytes=sum(len(b) for b in blobs),
        compress_s=best_c,
        decompress_s=best_d,
    )


if __name__ == "__main__":
    main()
