"""`graft`: Graftwork's command line."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..terms import RecycleMode
from .compare_cli import compare
from .console import DataDir, choose_data_dir, err, live_progress, say, settings, user_errors
from .plan_cli import plan
from .promotion_cli import approve, history, promote, reject, rollback
from .registry_cli import db_app, registry_app
from .service_cli import serve, ui, worker
from .testbed_cli import app as testbed_app
from .track_cli import track_app
from .webhook_cli import webhook

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from ..tasks.engine import DeltaSummary

# Help as click writes it, for every command (the sub-commands' apps take this one's mode): each docstring paragraph
# flows to the terminal's width, and a flag reads `--fast` or `--control / --no-control`. Rich's panels (typer's
# default) kept the single newlines of a docstring's later paragraphs, and wrote `--fast <bool>`.
app = typer.Typer(
    name="graft",
    help="Graftwork: carry fine-tuning over to new base-model releases with diff vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _everywhere(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Graftwork's data dir for this command (default: GRAFT_DATA_DIR, ~/.graftwork): its registry, "
            "blob store and, without PREFECT_API_URL, its Prefect database (the one `graft ui` serves).",
        ),
    ] = None,
) -> None:
    """Options every command takes: `graft --data-dir DIR COMMAND ...`."""
    choose_data_dir(data_dir)


app.add_typer(registry_app, name="registry")
app.add_typer(db_app, name="db")
app.add_typer(testbed_app)
app.add_typer(track_app, name="track")
app.command("webhook")(webhook)
app.command("plan")(plan)
app.command("promote")(promote)
app.command("rollback")(rollback)
app.command("history")(history)
app.command("approve")(approve)
app.command("reject")(reject)
app.command("compare")(compare)
app.command("ui")(ui)
app.command("serve")(serve)
app.command("worker")(worker)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)

Alpha = Annotated[float, typer.Option("--alpha", "-a", help="Scale of the diff vector: TARGET + ALPHA·Δ.")]
Output = Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not exist unless --overwrite).")]
AllowPickle = Annotated[
    bool, typer.Option("--allow-pickle", help="Accept pickle weights (*.bin, *.pt). Only for models you trust.")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (atomically, when complete).")]
Fsync = Annotated[
    bool,
    typer.Option(
        "--fsync", help="fsync OUT before returning, so it survives a power loss (slower; kills are always safe)."
    ),
]
ShardSize = Annotated[str, typer.Option("--max-shard-size", help="Largest output shard, e.g. 5GB, 500MB.")]


def parse_size(text: str) -> int:
    """Bytes in a size like `5GB`, `500MB` or `1024`.

    Raises:
        typer.BadParameter: the text is not a size.
    """
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size; write e.g. 5GB, 500MB or 1048576.")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


@contextmanager
def _frozen_import() -> Iterator[None]:
    """Import with the cyclic garbage collector paused, then freeze what was made: the objects of numba's
    compiler and typing registries are never scanned, neither during the import nor at exit, which makes a
    one-shot engine command about 0.13 s faster here (1.64 s against 1.77 s for `graft transfer` on the
    benchmark's 0.5 B family; `gc.freeze` is meant for such long-lived objects)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
    gc.freeze()


def _run(label: str, op: Callable[[Callable[[int, int], None]], DeltaSummary]) -> None:
    with user_errors(), _progress(label) as report:
        summary = op(report)
    say(describe(summary))


def describe(summary: DeltaSummary) -> str:
    """A short human summary of an engine operation: tensors, bytes, time, vocabulary rows."""
    seconds = max(summary.seconds, 1e-9)
    lines = [
        f"{summary.operation}: wrote {summary.output}",
        f"  tensors {summary.tensors} in {summary.shards} shard(s); read {_gb(summary.bytes_read)}, "
        f"wrote {_gb(summary.bytes_written)} in {summary.seconds:.2f} s "
        f"({rate(summary.bytes_read + summary.bytes_written, seconds)})",
    ]
    if summary.rows:
        lines.append("  vocabulary rows: " + ", ".join(f"{v} {k}" for k, v in summary.rows.items()))
    if summary.widened:
        lines.append(f"  stored in float64 to stay exact: {', '.join(summary.widened)}")
    return "\n".join(lines)


def _model(argument: Path) -> Path:
    """A model argument as a local folder: an existing folder as it is, else a Hub ref, downloaded
    pinned to its sha (huggingface_hub is imported only then)."""
    if Path(argument).is_dir():
        return Path(argument)
    from ..tasks.hub import fetch_model

    return fetch_model(argument)


def rate(nbytes: int, seconds: float) -> str:
    """Bytes per second as `2.41 GB/s`, or in MB/s below 1 GB/s (a small model's `0.00 GB/s` said nothing)."""
    per_second = nbytes / max(seconds, 1e-9)
    return f"{per_second / 1e9:.2f} GB/s" if per_second >= 1e9 else f"{per_second / 1e6:.1f} MB/s"


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


@app.command()
def diff(
    finetuned: Annotated[Path, typer.Argument(help="The fine-tuned model folder (m').")],
    base: Annotated[Path, typer.Argument(help="The base model folder it was fine-tuned from (m).")],
    out_dir: Output,
    allow_pickle: AllowPickle = False,
    overwrite: Overwrite = False,
    fsync: Fsync = False,
    max_shard_size: ShardSize = "5GB",
) -> None:
    """Write the diff vector Δ = FINETUNED − BASE as a diff folder (shards + diff.json)."""
    with _frozen_import():
        from ..tasks import engine

    _run(
        "diff",
        lambda report: engine.diff(
            finetuned=_model(finetuned),
            base=_model(base),
            out=out_dir,
            allow_pickle=allow_pickle,
            overwrite=overwrite,
            durable=fsync,
            max_shard_bytes=parse_size(max_shard_size),
            progress=report,
        ),
    )


@app.command()
def apply(
    diff_dir: Annotated[Path, typer.Argument(metavar="DIFF", help="A diff folder made by `graft diff`.")],
    target: Annotated[Path, typer.Argument(help="The model folder to add Δ to.")],
    out_dir: Output,
    alpha: Alpha = 1.0,
    allow_pickle: AllowPickle = False,
    overwrite: Overwrite = False,
    fsync: Fsync = False,
    max_shard_size: ShardSize = "5GB",
) -> None:
    """Write TARGET + ALPHA·Δ as a model folder."""
    with _frozen_import():
        from ..tasks import engine

    _run(
        "apply",
        lambda report: engine.apply(
            diff=diff_dir,
            target=_model(target),
            out=out_dir,
            alpha=alpha,
            allow_pickle=allow_pickle,
            overwrite=overwrite,
            durable=fsync,
            max_shard_bytes=parse_size(max_shard_size),
            progress=report,
        ),
    )


@app.command()
def transfer(
    finetuned: Annotated[Path, typer.Option("--finetuned", help="The fine-tuned source model folder (m'_s).")],
    base: Annotated[Path, typer.Option("--base", help="The base it was fine-tuned from (m_s).")],
    target: Annotated[Path, typer.Option("--target", help="The model to carry the fine-tuning to (m_t).")],
    out_dir: Output,
    alpha: Alpha = 1.0,
    allow_pickle: AllowPickle = False,
    overwrite: Overwrite = False,
    fsync: Fsync = False,
    max_shard_size: ShardSize = "5GB",
) -> None:
    """Write TARGET + ALPHA·(FINETUNED − BASE) in one streaming pass, without storing Δ."""
    with _frozen_import():
        from ..tasks import engine

    _run(
        "transfer",
        lambda report: engine.transfer(
            finetuned=_model(finetuned),
            base=_model(base),
            target=_model(target),
            out=out_dir,
            alpha=alpha,
            allow_pickle=allow_pickle,
            overwrite=overwrite,
            durable=fsync,
            max_shard_bytes=parse_size(max_shard_size),
            progress=report,
        ),
    )


@app.command()
def demo(
    data_dir: DataDir = None,
    releases: Annotated[int, typer.Option("--releases", min=1, max=5, help="Releases to publish, M1..M5.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="The test bed's seed.")] = 0,
    fast: Annotated[
        bool, typer.Option("--fast", help="Evaluate on 50 documents, and plain FT only at its start and end.")
    ] = False,
    testbed: Annotated[
        Path | None, typer.Option("--testbed", help="Use (or build) the test bed in this folder instead.")
    ] = None,
    mode: Annotated[
        RecycleMode | None,
        typer.Option("--mode", help="The track's recycle mode (default: the shipped track's, iterative)."),
    ] = None,
) -> None:
    """Graftwork end to end on the CPU test bed: releases published one by one, each carried over,
    fine-tuned, evaluated, gated and promoted through Prefect; then the lineage and what recycling saved.

    Everything stays under the data dir; a second run reuses what exists. The runs go to the data dir's
    Prefect server (`graft ui` shows them): the one running, else one started for the demo and stopped after it
    (none when no release is left to run).
    """
    started = time.perf_counter()  # before the demo's imports (torch's among them), which its time counts
    from ..operations.progress import listening
    from .demo import DemoOptions, run_demo

    options = DemoOptions(
        data_dir=(data_dir or settings().data_dir).resolve(),
        releases=releases,
        seed=seed,
        fast=fast,
        testbed=testbed,
        mode=mode,
        started=started,
    )
    with user_errors(), live_progress() as listener, listening(listener):
        run_demo(options=options, say=say)


@app.command()
def backport(
    track: Annotated[str, typer.Argument(help="The track.")],
    to: Annotated[str, typer.Option("--to", help="The older release: its id, ref or folder, or sha.")],
    alpha: Annotated[float | None, typer.Option("--alpha", "-a", help="Scale of Δ (default: the track's).")] = None,
) -> None:
    """Apply the track's newest Δ to an older release, evaluate it against that release's base, and record
    it as a backport candidate (no training; not gated onto the channel)."""
    from ..flows.backport import backport as backport_flow
    from .console import track_flows

    with track_flows(track):
        candidate = backport_flow(track=track, to=to, alpha=alpha)
    say(f"backported the newest Δ of {track} onto {to}: candidate-{candidate}")


if __name__ == "__main__":
    app()
