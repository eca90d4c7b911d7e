"""The words of Graftwork's domain as types: each is a `StrEnum`, validated where it enters (the CLI,
track YAML, flow parameters, the database), so an unknown value is an error, never a silent default.

| type | values |
| --- | --- |
| `RecycleMode` | how a release's start is made: `iterative`, `direct`, `none` (plain fine-tuning) |
| `GateDecision` | what a promotion row records: `promote`, `reject`, `rollback` |
| `EvalSubject` | which model an eval result scores: `candidate`, `base`, `transferred` (base + α·Δ), `champion` |
| `ActorKind` | who decided: the `gate`, or a `user` |
| `SourceKind` | where a track's releases come from: `local`, `hub-repos`, `hub-refs` |
| `ArtifactKind` | the registry's artifacts, as their public ids name them (`diff-3`) |
"""

from __future__ import annotations

from enum import StrEnum


class RecycleMode(StrEnum):
    """How the start of a release's fine-tune is made (Algorithm 1's modes)."""

    ITERATIVE = "iterative"
    DIRECT = "direct"
    NONE = "none"


class GateDecision(StrEnum):
    """What a promotion row records."""

    PROMOTE = "promote"
    REJECT = "reject"
    ROLLBACK = "rollback"


class EvalSubject(StrEnum):
    """The model an eval result scores."""

    CANDIDATE = "candidate"
    BASE = "base"
    TRANSFERRED = "transferred"
    CHAMPION = "champion"


class ActorKind(StrEnum):
    """Who made a promotion decision."""

    GATE = "gate"
    USER = "user"


class SourceKind(StrEnum):
    """Where a track's releases come from."""

    LOCAL = "local"
    HUB_REPOS = "hub-repos"
    HUB_REFS = "hub-refs"


class ArtifactKind(StrEnum):
    """The registry's artifacts, in the order `graft registry list` shows them."""

    RELEASE = "release"
    DIFF = "diff"
    CANDIDATE = "candidate"
    PROMOTION = "promotion"
