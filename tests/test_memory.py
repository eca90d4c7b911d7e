"""Guarantee 8: peak memory is bounded by the largest tensor, not by the model's size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from graftwork.tasks.testbed.synthetic import FamilySpec, build_family

_MEASURE = """
import resource, sys
from pathlib import Path
from graftwork.tasks import engine
root = Path(sys.argv[1])
engine.transfer(finetuned=root / "finetuned", base=root / "base", target=root / "target", out=Path(sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak_rss(family_root: Path, out: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(family_root), str(out)], check=True, capture_output=True, text=True
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_layers(tmp_path: Path) -> None:
    small = FamilySpec(vocab_size=8000, hidden_size=512, intermediate_size=2048, num_layers=2, num_heads=8)
    large = FamilySpec(**{**small.__dict__, "num_layers": 16})
    largest_tensor = small.vocab_size * small.hidden_size * 2
    added_input = 3 * 2 * (large.params - small.params)
    assert added_input > 40 * largest_tensor
    peaks = {}
    for name, spec in (("small", small), ("large", large)):
        build_family(tmp_path / name, spec=spec, max_shard_bytes=32 * 2**20)
        peaks[name] = _peak_rss(tmp_path / name, tmp_path / f"{name}-out")
    growth = peaks["large"] - peaks["small"]
    assert growth < 4 * largest_tensor, (peaks, largest_tensor, added_input)
