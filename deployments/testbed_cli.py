"""`graft testbed`: build the tiny model family that the demo, the tests and the benchmarks run on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tasks.errors import GraftError
from tasks.testbed import build_testbed

app = typer.Typer(
    name="testbed", help="The CPU test bed: a tiny Llama family with a skill to fine-tune.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)


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
    """Build (or reuse) the test bed: releases M1..Mn, a new release, fine-tuning data and an lm-eval task."""
    start = time.perf_counter()
    try:
        bed = build_testbed(out=out_dir, seed=seed, versions=versions, control=control, threads=threads)
    except GraftError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(f"test bed in {bed.root} ({time.perf_counter() - start:.1f} s)", highlight=False)
    for i, path in enumerate(bed.releases, 1):
        out.print(f"  release M{i}: {path}", highlight=False)
    out.print(f"  new release M{len(bed.releases) + 1}: {bed.new_release}", highlight=False)
    if bed.control is not None:
        out.print(f"  control (another initialisation): {bed.control}", highlight=False)
    out.print(f"  fine-tuning data: {bed.train_data}", highlight=False)
    out.print(f"  lm-eval tasks {bed.generate_task}, {bed.choice_task}: {bed.task_dir}", highlight=False)
