"""What every `graft` command shares: the two consoles and the way errors reach the user."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from ..errors import GraftError
from ..flows.settings import Workspace

if TYPE_CHECKING:
    from ..storage import Registry

err = Console(stderr=True)
out = Console()


def say(line: str) -> None:
    """Print one line of a command's output, as it is (no markup, no wrapping)."""
    out.print(line, highlight=False, soft_wrap=True, markup=False)


def open_registry() -> Registry:
    """The registry the settings name (migrated on first use).

    Raises:
        DatabaseError, SchemaTooNewError: the database cannot be reached, or is newer than this Graftwork.
    """
    return Workspace.from_settings().registry()


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn Graftwork's errors into one red line on stderr and exit status 1."""
    try:
        yield
    except GraftError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
        raise typer.Exit(1) from None
