"""What every `graft` command shares: the two consoles, live progress bars, and the way errors reach the user."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ..errors import GraftError
from ..operations.settings import GraftSettings, Workspace

if TYPE_CHECKING:  # the commands import what they use, so that `graft --help` starts at once
    from ..operations.progress import Listener
    from ..storage import Registry

err = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Graftwork's data dir (default: GRAFT_DATA_DIR, ~/.graftwork).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the output as JSON, not as text.")]


def say(line: str) -> None:
    """Print one line of a command's output, as it is (no markup, no wrapping)."""
    out.print(line, highlight=False, soft_wrap=True, markup=False)


def say_json(data: object) -> None:
    """Print `data` as JSON, indented by two spaces (times in ISO 8601): the output of a command's `--json`."""
    say(json.dumps(data, indent=2, default=lambda time: time.isoformat()))


class _Chosen:
    """The data dir `graft --data-dir DIR` gave this command, if any (set by the CLI's callback, each command)."""

    data_dir: Path | None = None


def choose_data_dir(data_dir: Path | None) -> None:
    """Make `data_dir` (None: the settings') the data dir of this command: what `graft --data-dir DIR` does."""
    _Chosen.data_dir = None if data_dir is None else data_dir.expanduser().resolve()


def settings() -> GraftSettings:
    """This command's settings: the environment's, with the data dir `graft --data-dir DIR` gave, if any."""
    return GraftSettings() if _Chosen.data_dir is None else GraftSettings(data_dir=_Chosen.data_dir)


def open_registry() -> Registry:
    """The registry the settings name (migrated on first use).

    Raises:
        DatabaseError, SchemaTooNewError: the database cannot be reached, or is newer than this Graftwork.
    """
    return Workspace.from_settings(settings()).registry()


@contextmanager
def live_progress() -> Iterator[Listener]:
    """A listener that draws each long step of the command as a live bar (step, done/total, elapsed) under
    its output, and removes the bar when the step ends; `say` prints above the bars meanwhile."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=True, refresh_per_second=4) as bars:
        shown: dict[str, TaskID] = {}

        def listener(what: str, done: int, total: int) -> None:
            if what not in shown:
                shown[what] = bars.add_task(what, total=total or None)
            bars.update(shown[what], completed=done, total=total or None)
            if total and done >= total:
                bars.remove_task(shown.pop(what))

        yield listener


@contextmanager
def track_flows(track: str) -> Iterator[None]:
    """Run a track's flows in this command: the track is checked first (an unknown one, or one whose release
    directory is missing, is refused before any server starts), then the flows run on the Prefect server
    PREFECT_API_URL names, else on the data dir's own (the one `graft serve` and `graft ui` run, started for the
    command when none runs), with their long steps drawn as live bars; errors reach the user as `user_errors`
    says."""
    from ..operations.progress import listening
    from ..operations.tracks import load_spec
    from .local_server import prefect_service

    with user_errors():
        load_spec(open_registry(), track=track).source.ready()
    with (
        user_errors(),
        prefect_service(settings=settings(), say=say),
        live_progress() as listener,
        listening(listener),
    ):
        yield


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn Graftwork's errors into one red line on stderr and exit status 1."""
    try:
        yield
    except GraftError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
        raise typer.Exit(1) from None
