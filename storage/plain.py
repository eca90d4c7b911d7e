"""Registry rows as plain data, for the `--json` of `graft registry ...`: each column under its own name
(timestamps in ISO 8601, the domain's words as their values), an artifact's public id, kind and track, and
what `graft registry show` adds to each kind.

Every function takes a Session where it needs one and only reads.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from . import evals
from .models import Base, Candidate, Diff
from .registry import Artifact, ancestors, kind_of, public_id
from .status import decisions_on


def columns(row: Base) -> dict[str, Any]:
    """Every column of `row`, by its name, in the table's order."""
    return {c.key: _plain(getattr(row, c.key)) for c in inspect(row).mapper.column_attrs}


def artifact(row: Artifact) -> dict[str, Any]:
    """An artifact as `graft registry list --json` prints it: `public_id` (`diff-3`), `artifact` (its kind:
    `diff`), `track` (its name), then its columns."""
    return {"public_id": public_id(row), "artifact": str(kind_of(row)), "track": row.track.name, **columns(row)}


def shown(session: Session, *, row: Artifact) -> dict[str, Any]:
    """An artifact as `graft registry show --json` prints it: `artifact(row)`, and for a diff its `files`
    (columns) and `lineage` (its public id and its ancestors', nearest first); for a candidate its
    `finetune_run` (columns, or None), `eval_results` (columns) and `decisions` (the promotion rows that
    named it, oldest first, as `artifact` gives them)."""
    data = artifact(row)
    if isinstance(row, Diff):
        data["files"] = [columns(f) for f in row.files]
        data["lineage"] = [public_id(d) for d in [row, *ancestors(session, diff=row)]]
    if isinstance(row, Candidate):
        data["finetune_run"] = None if row.finetune_run is None else columns(row.finetune_run)
        data["eval_results"] = [columns(r) for r in evals.eval_results(session, candidate=row)]
        data["decisions"] = [artifact(p) for p in decisions_on(session, candidate=row)]
    return data


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value
