"""The words of Graftwork's domain as types: each is a `StrEnum`, validated where it enters (the CLI,
track YAML, flow parameters, the database), so an unknown value is an error, never a silent default.

| type | values |
| --- | --- |
| `RecycleMode` | which Δ a release's start carries: `iterative` (Δ^iter), `source` (the track's first Δ), `none` |
| `CarryRule` | whose Δ: the `previous` release's (Algorithm 1), or the `champion`'s lineage |
| `ReleaseState` | a release's life: `discovered` → `dispatched` → `running` → `done`, `failed` or `skipped` |
| `CandidateKind` | what made a candidate: `recycle` (a release's run of Algorithm 1) or `backport` |
| `GateDecision` | what a promotion row records: `promote`, `reject`, `rollback` |
| `Verdict` | what the gate's rules say: `promote`, `reject`, or `wait` for a person's approval |
| `ApprovalRule` | whether a candidate that passes also waits for a person: `none`, `required` |
| `Dispatch` | how a watcher pass runs a release: `inline` (here) or as a `deployment` run |
| `EvalSubject` | which model an eval result scores: `candidate`, `base`, `transferred` (base + α·Δ), `champion` |
| `ActorKind` | who decided: the `gate`, or a `user` |
| `ReleaseOrder` | how a release source orders its releases: `folder`, `commit`, `created` |
| `ArtifactKind` | the registry's artifacts, as their public ids name them (`diff-3`) |
"""

from __future__ import annotations

from enum import StrEnum


class RecycleMode(StrEnum):
    """Which Δ the start of a release's fine-tune carries, M_i + α·Δ.

    `iterative` is Algorithm 1's Δ^iter: the Δ of the candidate made for the release the run carries
    from (Δ_{i−1} = M*_{i−1} − M_{i−1}, itself recycled then fine-tuned). `source` keeps applying the
    first Δ of that release's lineage, the one no recycling made (the track's first plain fine-tune's, or
    one imported), as the paper's Section 2 transfers one Δ_s. Neither is the paper's Δ^dir (the Δ of a
    plain fine-tune of the previous release), which `benchmarks/replicate.py` measures. `none` is plain
    fine-tuning, FT(M_i). `auto` decides per release: a pre-check of the weights, then a probe of M_i,
    M_i + α·Δ^iter and M_i + α·Δ^source for each α of a grid; the candidate records the start it chose (as
    one of the other three modes) and why.
    """

    ITERATIVE = "iterative"
    SOURCE = "source"
    NONE = "none"
    AUTO = "auto"


class CarryRule(StrEnum):
    """Which release's Δ a run carries: the `previous` release's in the track's order (Algorithm 1,
    whether or not its candidate was promoted), or the `champion`'s (the candidate promoted on the
    track's channel when the run starts)."""

    PREVIOUS = "previous"
    CHAMPION = "champion"


class ReleaseState(StrEnum):
    """Where a release is in its life. `skipped`: its model files are those of the release before it.
    `superseded`: its folder's files changed before it ran to the end, and the release that holds them now
    runs in its place (it is never run again, nor waited behind)."""

    DISCOVERED = "discovered"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"


class CandidateKind(StrEnum):
    """What made a candidate: a release's run of Algorithm 1, or a backport of a newer Δ onto an older release."""

    RECYCLE = "recycle"
    BACKPORT = "backport"


class GateDecision(StrEnum):
    """What a promotion row records."""

    PROMOTE = "promote"
    REJECT = "reject"
    ROLLBACK = "rollback"


class Verdict(StrEnum):
    """What the gate's rules say of a candidate: promote it, reject it, or wait for a person's approval (it passed
    the rules of a track whose gate requires one)."""

    PROMOTE = "promote"
    REJECT = "reject"
    WAIT = "wait"


class ApprovalRule(StrEnum):
    """Whether a candidate that passes the gate's rules also waits for a person (`gate.approval`)."""

    NONE = "none"
    REQUIRED = "required"


class Dispatch(StrEnum):
    """How a watcher pass runs a release: here, one after the other (`inline`), or as a run of the recycle
    deployment (`deployment`)."""

    INLINE = "inline"
    DEPLOYMENT = "deployment"


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


class ReleaseOrder(StrEnum):
    """How a release source orders its releases: by folder name, by commit time, or by creation time (then commit)."""

    FOLDER = "folder"
    COMMIT = "commit"
    CREATED = "created"


class ArtifactKind(StrEnum):
    """The registry's artifacts, in the order `graft registry list` shows them."""

    RELEASE = "release"
    DIFF = "diff"
    CANDIDATE = "candidate"
    PROMOTION = "promotion"
