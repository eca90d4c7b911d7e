"""The demo: Graftwork doing its job end to end on the embedded defaults.

It copies the shipped CPU test bed (or builds another seed's), registers the demo track, then
publishes the test bed's base releases into the track's release directory one at a time, as a release
cadence would. For each, the watcher finds it and Algorithm 1 runs through Prefect: carry the previous Δ
over, fine-tune, register the new Δ, evaluate, gate, promote. Beside each candidate it fine-tunes the bare
release with the same budget (plain FT), evaluating along the way, to show what recycling saved.

Everything lives under one data dir: the test bed, the registry (SQLite), the blob store, the runs'
working folders and Prefect's own database (`DATA_DIR/prefect`), which `graft ui` serves; the runs go to
the data dir's Prefect server, started for them when none runs. Killed at any point, the demo finishes the
job on its next run: a release that was published but has no decision is run again, and every step it had
completed is found where it left it. A run with no release left to run reuses it all and starts no server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ReleaseOrderError
from ..flows.watch import watch_releases
from ..fs import Say, write_text_atomic
from ..operations.progress import told
from ..operations.settings import GraftSettings, Workspace
from ..operations.shipped import shipped_file
from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.evaluate import EvalRecord
from ..tasks.suite import Suite
from ..tasks.testbed import Testbed, build_testbed
from ..tasks.testbed.probe import probe_suite
from ..tasks.track import TrackSpec, load_track, spec_digest
from ..tasks.training.finetune import finetune
from ..terms import Dispatch, RecycleMode
from .demo_table import HEADER, ReleaseRow, decided, line, release_row, summary
from .local_server import prefect_service

TRACK = "testbed-demo"
CURVE_EVERY = 10
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # Prefect's run loggers: their handler sends to the API


@dataclass(frozen=True)
class DemoOptions:
    """What `graft demo` runs: where, how many releases, which seed, and how much work per release."""

    data_dir: Path
    releases: int = 4
    seed: int = 0
    fast: bool = False
    testbed: Path | None = None
    mode: RecycleMode | None = None
    started: float = field(default_factory=time.perf_counter)
    """When the command began, for the time it reports."""

    @property
    def root(self) -> Path:
        return self.data_dir / "demo"

    @property
    def workspace(self) -> Workspace:
        return Workspace.at(self.data_dir)

    @property
    def log(self) -> Path:
        return self.root / "demo.log"


def run_demo(*, options: DemoOptions, say: Say) -> list[ReleaseRow]:
    """Run the demo; return its table. A second run reuses what exists and says so; a run after a kill
    finishes what the killed one left. The runs go to the data dir's Prefect server (the one running, else one
    started for them and stopped after them), which a run with no release left to run does not start.

    Raises:
        TestbedError: the test bed cannot be built where asked.
        LocalPrefectError: the data dir's Prefect server could not be started or used (as `prefect_service`).
        GraftError: a step of the flow failed (its message says which and why).
    """
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    with _quiet_libraries(options.log), temporary_settings(updates={PREFECT_LOGGING_LEVEL: "WARNING"}):
        return _run(options, say)


@contextmanager
def _quiet_libraries(log: Path) -> Iterator[None]:
    """Send the libraries' progress bars and info logs (Prefect's, lm-eval's, transformers') to the demo's
    log for the duration: the demo reports progress itself. The runs' own logs (each step's line) go to
    their Prefect server only, for their Logs tabs in the UI, and not to the terminal."""
    quiet = {name: logging.getLogger(name) for name in ("prefect", "lm_eval", "transformers")}
    runs = [logging.getLogger(name) for name in RUN_LOGGERS]
    levels = {logger: (logger.level, logger.propagate) for logger in [*quiet.values(), *runs]}
    for name, logger in quiet.items():
        logger.setLevel(logging.WARNING if name == "prefect" else logging.ERROR)
    for logger in runs:
        logger.setLevel(logging.INFO)
        logger.propagate = False
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with redirect_stderr(_AppendOnly(log)):
            yield
    finally:
        for logger, (level, propagate) in levels.items():
            logger.setLevel(level)
            logger.propagate = propagate


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
    """The demo's work, then its table. The data dir's Prefect server is started only when a release is left to
    run: a run that finds every release decided (the plain-FT curves, if any are missing, need no server) starts
    none. The time it reports is the command's, the server's start and stop included."""
    bed = _testbed(options, say)
    versions = (*bed.releases, bed.new_release)[: options.releases]
    spec = _register_track(options, bed, say)
    release_dir = options.root / "releases"
    release_dir.mkdir(parents=True, exist_ok=True)
    registry = options.workspace.registry()
    folders = [release_dir / f"{i:02d}-{model.name}" for i, model in enumerate(versions, 1)]
    done = [folder.exists() and decided(registry, track=TRACK, ref=folder.name) for folder in folders]
    settings = GraftSettings(data_dir=options.data_dir)
    table: list[ReleaseRow] = []
    with nullcontext() if all(done) else prefect_service(settings=settings, say=say, own=True):
        for model, folder, earlier in zip(versions, folders, done, strict=True):
            if not earlier:
                _release(options, model, folder, say)
            curve = _plain_curve(options, spec, model, bed)
            table.append(release_row(registry, track=TRACK, spec=spec, name=model.name, ref=folder.name, curve=curve))
    say("")
    say(HEADER)
    for row in table:
        say(line(row))
    summary(table, track=TRACK, data_dir=options.data_dir, log=options.log, say=say)
    took, reused = f"Done in {time.perf_counter() - options.started:.0f} s", sum(done)
    say(f"{took} ({reused} of {len(table)} releases done by an earlier run, reused)." if reused else f"{took}.")
    return table


def _release(options: DemoOptions, model: Path, folder: Path, say: Say) -> None:
    """Publish `model` as a release (if it is not yet) and let the watcher see it through Algorithm 1: it
    runs a new release, and one whose earlier run died (a killed demo) again, resuming that run.

    Raises:
        ReleaseOrderError: the watcher could not run it (the message says what it waits for).
    """
    if _publish(model, folder):
        say(f"{model.name}: published; the watcher finds it: carry over, fine-tune, evaluate, gate ...")
    else:
        say(f"{model.name}: published by an earlier run that stopped before its decision; finishing it ...")
    done = watch_releases(track=TRACK, dispatch=Dispatch.INLINE, data_dir=options.data_dir)
    if not decided(options.workspace.registry(), track=TRACK, ref=folder.name):
        raise ReleaseOrderError(f"the demo's release {folder.name} did not run: {done.waiting}.", release=folder.name)


def _testbed(options: DemoOptions, say: Say) -> Testbed:
    if options.testbed is not None:
        say(f"Using the test bed in {options.testbed}")
        return build_testbed(out=options.testbed, seed=options.seed, control=False)
    out = options.root / "testbed"
    if (out / "testbed.json").is_file():
        say(f"Reusing the CPU test bed in {out}")
    elif options.seed == 0:
        say(f"Copying the shipped CPU test bed (seed 0) to {out}")
    else:
        say(f"Building the CPU test bed for seed {options.seed} in {out} (about five minutes)")
    return build_testbed(out=out, seed=options.seed, control=False)


def _register_track(options: DemoOptions, bed: Testbed, say: Say) -> TrackSpec:
    """Write the demo track (the shipped template with this data dir's paths), register it, return it."""
    spec = yaml.safe_load(shipped_file("tracks", f"{TRACK}.yaml").read_text())
    spec["source"]["release_dir"] = str(options.root / "releases")
    spec["finetune"]["data"] = str(bed.train_data)
    spec["eval"]["task_dirs"] = [str(bed.task_dir)]
    if options.fast:
        spec["eval"]["limit"] = 50
    if options.mode is not None:
        spec["recycle"]["mode"] = options.mode.value
    if options.mode is RecycleMode.AUTO:  # its zero-shot probe scores the starts on sums the gate never sees
        probe = probe_suite(bed=bed, suite=Suite.model_validate(spec["eval"]), out=options.root / "probe", examples=100)
        spec["recycle"]["probe_suite"] = probe.model_dump(mode="json")
    path = options.root / f"{TRACK}.yaml"
    write_text_atomic(path, yaml.safe_dump(spec, sort_keys=False))
    track = load_track(path)
    with session_scope(options.workspace.registry().engine) as session:
        _, new = rows.save_track(
            session, name=track.name, spec=track.model_dump(mode="json"), digest=spec_digest(track)
        )
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


def _plain_curve(options: DemoOptions, spec: TrackSpec, model: Path, bed: Testbed) -> list[tuple[int, float]]:
    """Plain FT of the bare release with the same budget: (step, score) every few steps (cached)."""
    saved = options.root / "plain-ft" / f"{model.name}.json"
    if saved.is_file():
        return [(s, v) for s, v in json.loads(saved.read_text())]
    primary = spec.gate.metrics[0]
    with told(f"{model.name}: plain fine-tune (for comparison)") as report:
        result = finetune(
            model_dir=model,
            data=bed.train_data,
            recipe=spec.finetune.recipe,
            out_dir=options.root / "plain-ft" / model.name,
            eval_every=spec.finetune.recipe.steps if options.fast else CURVE_EVERY,
            eval_suite=spec.eval,
            overwrite=True,
            progress=report,
        )
    curve = [(step, _value(records, primary.task, primary.metric)) for step, records in result.eval_curve]
    write_text_atomic(saved, json.dumps(curve))
    return curve


def _value(records: tuple[EvalRecord, ...], task: str, metric: str) -> float:
    return next(r.value for r in records if r.task == task and r.metric == metric)
