"""The demo: Graftwork doing its job end to end on the embedded defaults.

It builds (or reuses) the CPU test bed, registers the demo track, then publishes the test bed's base
releases into the track's release directory one at a time, as a release cadence would. For each,
the watcher finds it and Algorithm 1 runs through Prefect: carry the previous Δ over, fine-tune,
register the new Δ, evaluate, gate, promote. Beside each candidate it fine-tunes the bare release
with the same budget (plain FT), evaluating along the way, to show what recycling saved.

Everything lives under one data dir: the test bed, the registry (SQLite), the blob store, the runs'
working folders and Prefect's own database (`DATA_DIR/prefect`), which `graft ui` serves.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..fs import Say
from ..storage import registry as rows
from ..storage import runs
from ..storage.db import session_scope
from ..tasks.evaluate import EvalRecord
from ..tasks.testbed import Testbed, build_testbed
from ..tasks.training.finetune import finetune
from ..terms import EvalSubject
from .settings import Workspace
from .shipped import shipped_file
from .tracks import TrackSpec, load_track
from .watch import watch_releases

TRACK = "testbed-demo"
CURVE_EVERY = 10


@dataclass(frozen=True)
class DemoOptions:
    """What `graft demo` runs: where, how many releases, which seed, and how much work per release."""

    data_dir: Path
    releases: int = 4
    seed: int = 0
    fast: bool = False
    testbed: Path | None = None

    @property
    def root(self) -> Path:
        return self.data_dir / "demo"

    @property
    def workspace(self) -> Workspace:
        return Workspace.at(self.data_dir)


@dataclass(frozen=True)
class ReleaseRow:
    """One line of the demo's table."""

    release: str
    base: float
    transferred: float | None
    candidate: float
    plain: float
    plain_steps_to_transfer: int | None
    decision: str
    reason: str


def run_demo(*, options: DemoOptions, say: Say) -> list[ReleaseRow]:
    """Run the demo; return its table. A second run reuses what exists and says so.

    Raises:
        TestbedError: the test bed cannot be built where asked.
        GraftError, StorageError: a step of the flow failed (its message says which and why).
    """
    with _local_services(options.data_dir):
        return _run(options, say)


@contextmanager
def _local_services(data_dir: Path) -> Iterator[None]:
    """Point Prefect (PREFECT_HOME: its SQLite database, with no API URL so that Prefect runs on it
    in-process) at the data dir for the duration of the demo, and send the libraries' progress bars
    and info logs (Prefect's, lm-eval's, transformers') to `DATA_DIR/demo/demo.log`: the demo reports
    progress itself. The registry is pointed at the data dir by the flows' `data_dir` argument."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOGGING_LEVEL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    quiet = {name: logging.getLogger(name) for name in ("prefect", "lm_eval", "transformers")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for name, logger in quiet.items():
        logger.setLevel(logging.WARNING if name == "prefect" else logging.ERROR)
    updates = {
        PREFECT_HOME: data_dir / "prefect",
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_LOGGING_LEVEL: "WARNING",
    }
    log = data_dir / "demo" / "demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            temporary_settings(
                updates=updates, restore_defaults={PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL}
            ),
            redirect_stderr(_AppendOnly(log)),
        ):
            yield
    finally:
        for name, logger in quiet.items():
            logger.setLevel(levels[name])


class _AppendOnly(io.TextIOBase):
    """A text stream that appends each write to a file: never closed, so that a library's late log
    line (Prefect stops its server at exit) still has somewhere to go."""

    def __init__(self, path: Path):
        self._path = path

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._path.open("a") as f:
            return f.write(text)


def _run(options: DemoOptions, say: Say) -> list[ReleaseRow]:
    start = time.perf_counter()
    bed = _testbed(options, say)
    versions = (*bed.releases, bed.new_release)[: options.releases]
    spec = _register_track(options, bed, say)
    release_dir = options.root / "releases"
    release_dir.mkdir(parents=True, exist_ok=True)
    table: list[ReleaseRow] = []
    say("")
    say(f"{'release':<8} {'base':>6} {'base+Δ':>7} {'FT(base+Δ)':>11} {'plain FT':>9}  gate")
    for i, model in enumerate(versions, 1):
        folder = release_dir / f"{i:02d}-{model.name}"
        published = _publish(model, folder)
        if published:
            say(f"{model.name:<8} published; the watcher found it: carry over, fine-tune, evaluate, gate ...")
            watch_releases(track=TRACK, dispatch="inline", data_dir=options.data_dir)
        row = _row(options, spec, model, bed, folder.name)
        table.append(row)
        say(_line(row) + ("" if published else "   (reused)"))
    _summary(table, options, say, time.perf_counter() - start)
    return table


def _testbed(options: DemoOptions, say: Say) -> Testbed:
    if options.testbed is not None:
        say(f"Using the test bed in {options.testbed}")
        return build_testbed(out=options.testbed, seed=options.seed, control=False)
    out = options.root / "testbed"
    reused = (out / "testbed.json").is_file()
    say(("Reusing" if reused else "Building (about five minutes)") + f" the CPU test bed in {out}")
    bed = build_testbed(out=out, seed=options.seed, control=False)
    if not reused:
        say(f"  base releases M1..M{len(bed.releases)} and a new release M{len(bed.releases) + 1}")
    return bed


def _register_track(options: DemoOptions, bed: Testbed, say: Say) -> TrackSpec:
    """Write the demo track (the shipped template with this data dir's paths), register it, return it."""
    spec = yaml.safe_load(shipped_file("tracks", f"{TRACK}.yaml").read_text())
    spec["source"]["release_dir"] = str(options.root / "releases")
    spec["finetune"]["data"] = str(bed.train_data)
    spec["eval"]["task_dirs"] = [str(bed.task_dir)]
    if options.fast:
        spec["eval"]["limit"] = 50
    path = options.root / f"{TRACK}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    track = load_track(path)
    with session_scope(options.workspace.registry().engine) as session:
        _, new = rows.save_track(session, name=track.name, spec=track.model_dump(mode="json"))
    say(f"{'Registered' if new else 'Reusing'} track {TRACK} ({path})")
    return track


def _publish(model: Path, at: Path) -> bool:
    """Make `model` a release of the demo track (atomically); False if it already is one."""
    if at.exists():
        return False
    partial = at.with_name(f".{at.name}.partial")
    if partial.is_symlink():
        partial.unlink()
    partial.symlink_to(model.resolve(), target_is_directory=True)
    os.replace(partial, at)
    return True


def _row(options: DemoOptions, spec: TrackSpec, model: Path, bed: Testbed, published_as: str) -> ReleaseRow:
    primary = spec.gate.metrics[0]
    with session_scope(options.workspace.registry().engine) as session:
        track = rows.get_track(session, name=TRACK)
        candidate = runs.candidate_for(session, track=track, ref=published_as)
        assert candidate is not None, f"the watcher made a candidate for release {published_as}"
        found = runs.release_scores(session, candidate=candidate, metric=primary.metric)
        scores = {r.subject: r.value for r in found}
        promotion = runs.decision_for(session, candidate=candidate)
        assert promotion is not None
        decision = promotion.decision
        reason = next((r for r in promotion.reasons if r.startswith("fail")), promotion.reasons[-1])
    curve = _plain_curve(options, spec, model, bed)
    transferred = scores.get(EvalSubject.TRANSFERRED)
    return ReleaseRow(
        release=model.name,
        base=scores[EvalSubject.BASE],
        transferred=transferred,
        candidate=scores[EvalSubject.CANDIDATE],
        plain=curve[-1][1],
        plain_steps_to_transfer=None if transferred is None else next((s for s, v in curve if v >= transferred), None),
        decision=decision,
        reason=reason,
    )


def _plain_curve(options: DemoOptions, spec: TrackSpec, model: Path, bed: Testbed) -> list[tuple[int, float]]:
    """Plain FT of the bare release with the same budget: (step, score) every few steps (cached)."""
    saved = options.root / "plain-ft" / f"{model.name}.json"
    if saved.is_file():
        return [(s, v) for s, v in json.loads(saved.read_text())]
    primary = spec.gate.metrics[0]
    result = finetune(
        model_dir=model,
        data=bed.train_data,
        recipe=spec.finetune.recipe,
        out_dir=options.root / "plain-ft" / model.name,
        eval_every=spec.finetune.recipe.steps if options.fast else CURVE_EVERY,
        eval_suite=spec.eval,
        overwrite=True,
    )
    curve = [(step, _value(records, primary.task, primary.metric)) for step, records in result.eval_curve]
    saved.write_text(json.dumps(curve))
    return curve


def _value(records: tuple[EvalRecord, ...], task: str, metric: str) -> float:
    return next(r.value for r in records if r.task == task and r.metric == metric)


def _line(row: ReleaseRow) -> str:
    transferred = "—" if row.transferred is None else f"{row.transferred:.2f}"
    return (
        f"{row.release:<8} {row.base:>6.2f} {transferred:>7} {row.candidate:>11.2f} {row.plain:>9.2f}  "
        f"{row.decision}: {row.reason.removeprefix('pass: ').removeprefix('fail: ')}"
    )


def _summary(table: list[ReleaseRow], options: DemoOptions, say: Say, seconds: float) -> None:
    say("")
    say("base: the bare release; base+Δ: the previous candidate's Δ added, no training; FT(base+Δ): the")
    say("candidate (Algorithm 1); plain FT: the bare release fine-tuned with the same budget.")
    saved = [r for r in table if r.transferred is not None]
    if saved:
        say("Compute that recycling saved (plain-FT steps needed to reach what base+Δ has with no training):")
        for r in saved:
            steps = "more than the whole budget" if r.plain_steps_to_transfer is None else r.plain_steps_to_transfer
            say(f"  {r.release}: {steps}")
    say("")
    say(f"Diff lineage: graft registry lineage {TRACK}    (data dir {options.data_dir})")
    say(f"See the runs in the Prefect UI: graft ui --data-dir {options.data_dir}")
    say(f"The libraries' own logs: {options.root / 'demo.log'}")
    say(f"Done in {seconds:.0f} s.")
