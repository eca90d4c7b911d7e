"""How long the read-only commands take, against Python's own start in the same run.

Each command runs as a user's shell runs it (`graft ...` in a new process), on a throwaway data dir whose
registry holds one track of the shipped test bed; each is timed REPEAT times and the median is printed, with
`python -c pass` (the floor) and the difference above it. The goal: under 1 s on an idle 2-core machine, and
under 0.5 s above Python's start. Commands run as installed: with their bytecode cached (PYTHONDONTWRITEBYTECODE,
which some shells set, is dropped, and each command runs once untimed first), not compiled from source each time.

    python benchmarks/bench_commands.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GRAFT = str(Path(sys.executable).parent / "graft")
COMMANDS = (
    "--help",
    "track list",
    "track show bed",
    "track status bed",
    "history bed",
    "registry list",
    "registry lineage bed",
    "compare release-1 candidate-1",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GRAFT_DATA_DIR": str(Path(tmp) / "data"), "OMP_NUM_THREADS": "1"}
        for name in ("GRAFT_DATABASE_URL", "GRAFT_BLOB_URL", "PREFECT_API_URL", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        subprocess.run([GRAFT, "track", "add", str(_track(Path(tmp)))], env=env, check=True, capture_output=True)
        floor = _median([sys.executable, "-c", "pass"], env=env, repeat=args.repeat)
        print(f"{'command':<36} {'median s':>9} {'above python':>13}")
        print(f"{'python -c pass':<36} {floor:9.3f} {0:13.3f}")
        for command in COMMANDS:
            subprocess.run([GRAFT, *command.split()], env=env, capture_output=True, check=False)
            took = _median([GRAFT, *command.split()], env=env, repeat=args.repeat)
            print(f"{'graft ' + command:<36} {took:9.3f} {took - floor:13.3f}")


def _track(root: Path) -> Path:
    """A track file over the shipped test bed's first release."""
    from graftwork.tasks.testbed import build_testbed

    bed = build_testbed(out=root / "testbed", seed=0, control=False)
    releases = root / "releases"
    releases.mkdir()
    (releases / "01-M1").symlink_to(bed.releases[0], target_is_directory=True)
    spec = {
        "name": "bed",
        "source": {"kind": "local", "release_dir": str(releases)},
        "finetune": {"data": str(bed.train_data), "recipe": {"steps": 10}},
        "eval": {"tasks": [bed.generate_task], "task_dirs": [str(bed.task_dir)]},
        "gate": {"metrics": [{"task": bed.generate_task, "metric": "exact_match"}]},
    }
    path = root / "bed.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _median(argv: list[str], *, env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
