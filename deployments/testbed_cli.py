"""`graft testbed`: build the tiny model family that the demo, the tests and the benchmarks run on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .console import say, settings, user_errors

app = typer.Typer(
    name="testbed", help="The CPU test bed: a tiny Llama family with a skill to fine-tune.", no_args_is_help=True
)


@app.command()
def build(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to build in (reused when built the same way).")],
    seed: Annotated[int, typer.Option("--seed", help="Seeds the corpus, the data and the initialisation.")] = 0,
    versions: Annotated[int, typer.Option("--versions", help="Base releases M1..Mn to checkpoint.")] = 4,
    control: Annotated[
        bool, typer.Option("--control/--no-control", help="Also pretrain a second-initialisation control model.")
    ] = True,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads (1 suits this tiny model best).")] = 1,
) -> None:
    """Build the test bed from scratch (or reuse one built the same way in OUT): releases M1..Mn, a new
    release, a control, fine-tuning data and lm-eval tasks. Seed 0 gives the shipped bed, bit for bit."""
    from ..tasks.testbed import build_testbed

    start = time.perf_counter()
    with user_errors():
        bed = build_testbed(
            out=out_dir,
            seed=seed,
            versions=versions,
            control=control,
            threads=threads,
            from_scratch=True,
            environment=settings().child_environment(),
        )
    say(f"test bed in {bed.root} ({time.perf_counter() - start:.1f} s)")
    for i, path in enumerate(bed.releases, 1):
        say(f"  release M{i}: {path}")
    say(f"  new release M{len(bed.releases) + 1}: {bed.new_release}")
    if bed.control is not None:
        say(f"  control (another initialisation): {bed.control}")
    say(f"  fine-tuning data: {bed.train_data}; preference pairs (DPO): {bed.preference_data}")
    say(f"  lm-eval tasks {bed.generate_task}, {bed.choice_task}, {bed.preference_task}: {bed.task_dir}")
