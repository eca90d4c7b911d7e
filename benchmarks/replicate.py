"""The paper's effects, reproduced on the test bed with Graftwork's own engine, fine-tuning and evaluation.

    python benchmarks/replicate.py [--quick] [--out benchmarks/results/replicate] [--seeds 0 1 2]

For each seed it builds (or reuses) a test bed and measures: the transfer matrix M_i + Δ_j next to M_i
and FT(M_i) (Table 3); learning curves of FT(M_i) against FT(M_i + Δ_{i−1}) (Figure 2); Algorithm 1
(iterative) against direct recycling and plain fine-tuning over the versions (Table 6, Figure 3); and a
control lineage from another initialisation whose diffs must not transfer. It writes `report.md`,
`seeds.json` (everything measured, seed by seed), `results.json` and PNG plots, and states seed by seed which
findings held.

    python benchmarks/replicate.py --auto [--seeds 0 1 2] [--out DIR] [--steps 200]

measures `recycle.mode: auto` instead (see `auto_run`): for each seed and release M2..M5 every mode's final
accuracy, every candidate start fine-tuned in full (to know the true winner), each probe's pick and cost, and
the pre-check on the control lineage. It writes `auto.md` and `auto.json` (the detail).

    python benchmarks/replicate.py --dpo [--out DIR]

measures whether an SFT → DPO track's Δ carries over (see `carry_dpo.py`), on the shipped seed-0 bed; it writes
`dpo.md` and `dpo.json`.

`results.json` is, in both cases, one row per seed, release and mode:
`{"seed", "release", "mode", "final", "steps", "probe_steps"}`, `final` the exact-match accuracy in percent
after the full fine-tune. (Before `auto`, `results.json` held what `seeds.json` holds now.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"):
    os.environ.setdefault(_var, "1")

from graftwork.tasks import engine  # noqa: E402
from graftwork.tasks.evaluate import evaluate  # noqa: E402
from graftwork.tasks.starts.choice import PLAIN, ProbeResult  # noqa: E402
from graftwork.tasks.starts.make import make_starts  # noqa: E402
from graftwork.tasks.starts.precheck import precheck  # noqa: E402
from graftwork.tasks.starts.probes import choose, score_starts  # noqa: E402
from graftwork.tasks.starts.spec import Probe  # noqa: E402
from graftwork.tasks.suite import Suite  # noqa: E402
from graftwork.tasks.testbed import Testbed, build_testbed  # noqa: E402
from graftwork.tasks.testbed.probe import probe_suite  # noqa: E402
from graftwork.tasks.testbed.shipped import differences, unexplained  # noqa: E402
from graftwork.tasks.training.finetune import finetune  # noqa: E402
from graftwork.tasks.training.recipe import Recipe  # noqa: E402

STRONG_GAIN = 20.0  # points a strong base must gain from M_i + Δ_{i−1}, with no training
WEAK_GAIN = 10.0  # points a weak base (M1) or the control lineage must stay under
EARLY_STEP = 50


@dataclass(frozen=True)
class Setup:
    """How much to run: the full report or the quick one the tests use."""

    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    control: bool
    new_release: bool
    from_scratch: bool
    threads: int = 1


# The full report pretrains every bed from scratch and checks seed 0's against the shipped bed, bit for
# bit; the quick one starts from the shipped bed.
FULL = Setup(seeds=(0, 1, 2), steps=200, eval_every=50, control=True, new_release=True, from_scratch=True)
QUICK = Setup(seeds=(0,), steps=100, eval_every=50, control=False, new_release=False, from_scratch=False)


@dataclass
class SeedRun:
    """Everything measured on one seed's test bed (accuracies in percent)."""

    seed: int
    base: dict[str, float] = field(default_factory=dict)
    finetuned: dict[str, float] = field(default_factory=dict)
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    algorithm1: dict[str, dict[str, float]] = field(default_factory=dict)
    control: dict[str, float] = field(default_factory=dict)
    findings: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0


class Lab:
    """One seed's work folder: fine-tunes, diffs and transfers by name, each done once."""

    def __init__(self, *, bed: Testbed, work: Path, setup: Setup) -> None:
        self.bed, self.work, self.setup = bed, work, setup
        self.suite = Suite(name="testbed", tasks=(bed.generate_task,), task_dirs=(bed.task_dir,))
        self.recipe = Recipe(steps=setup.steps, seed=bed.seed)
        self._acc: dict[Path, float] = {}

    def acc(self, model: Path) -> float:
        if model not in self._acc:
            (record,) = evaluate(model_dir=model, suite=self.suite)
            self._acc[model] = 100 * record.value
        return self._acc[model]

    def finetune(self, name: str, model: Path, *, curve: bool) -> tuple[Path, list[tuple[int, float]]]:
        result = finetune(
            model_dir=model,
            data=self.bed.train_data,
            recipe=self.recipe,
            out_dir=self.work / "ft" / name,
            eval_every=self.setup.eval_every if curve else None,
            eval_suite=self.suite if curve else None,
            threads=self.setup.threads,
            overwrite=True,
        )
        points = [(step, 100 * records[0].value) for step, records in result.eval_curve]
        if points:
            self._acc[result.out_dir] = points[-1][1]
        return result.out_dir, points

    def diff(self, name: str, finetuned: Path, base: Path) -> Path:
        return engine.diff(finetuned=finetuned, base=base, out=self.work / "diffs" / name, overwrite=True).output

    def apply(self, name: str, diff: Path, target: Path) -> Path:
        return engine.apply(diff=diff, target=target, out=self.work / "transfers" / name, overwrite=True).output


def build(*, seed: int, setup: Setup, beds: Path, own_control: bool) -> Testbed:
    """One seed's test bed, with its own control lineage only when no other seed can serve as one."""
    return build_testbed(
        out=beds / f"seed{seed}", seed=seed, control=own_control, threads=setup.threads, from_scratch=setup.from_scratch
    )


def run_seed(*, seed: int, setup: Setup, root: Path, beds: Path, control: Path | None = None) -> SeedRun:
    """Every measurement of the report on one seed.

    `control` is a model pretrained from another initialisation (another seed's last release); without
    one, and when the set-up asks for a control, the test bed builds its own.
    """
    start = time.perf_counter()
    bed = build(seed=seed, setup=setup, beds=beds, own_control=setup.control and control is None)
    control = control or bed.control
    lab = Lab(bed=bed, work=root / f"seed{seed}", setup=setup)
    run = SeedRun(seed=seed)
    releases = (*bed.releases, bed.new_release) if setup.new_release else bed.releases
    versions = {f"M{i}": p for i, p in enumerate(releases, 1)}
    names = list(versions)
    fts, diffs = {}, {}
    for name, path in versions.items():
        run.base[name] = lab.acc(path)
        fts[name], run.curves[f"FT({name})"] = lab.finetune(name, path, curve=name != names[0])
        run.finetuned[name] = lab.acc(fts[name])
        diffs[name] = lab.diff(name, fts[name], path)
    for target in names:
        run.matrix[target] = {
            source: lab.acc(lab.apply(f"{target}+d{source}", diffs[source], versions[target]))
            for source in names
            if source != target
        }
    # Algorithm 1: direct recycles the previous version's plain Δ; iterative the previous recycled one.
    direct = {names[0]: run.finetuned[names[0]]}
    iterative = {names[0]: run.finetuned[names[0]]}
    star_prev = fts[names[0]]  # M*_1 = FT(M1)
    for prev, name in itertools.pairwise(names):
        recycled = lab.apply(f"{name}+d{prev}", diffs[prev], versions[name])
        ft_path, run.curves[f"FT({name}+Δ{prev[1:]})"] = lab.finetune(f"{name}+d{prev}", recycled, curve=True)
        direct[name] = lab.acc(ft_path)
        if prev == names[0]:
            star = ft_path  # Δ*_1 is Δ_1: the first recycled step is the same in both modes
        else:
            chain = lab.diff(f"iter-{prev}", star_prev, versions[prev])
            star, _ = lab.finetune(f"iter-{name}", lab.apply(f"{name}+diter{prev}", chain, versions[name]), curve=False)
        iterative[name] = lab.acc(star)
        star_prev = star
    run.algorithm1 = {"none": dict(run.finetuned), "direct": direct, "iterative": iterative}
    if setup.control and control is not None:
        last = names[len(bed.releases) - 1]
        ft_control, _ = lab.finetune("control", control, curve=False)
        control_diff = lab.diff("control", ft_control, control)
        run.control = {
            "C": lab.acc(control),
            "FT(C)": lab.acc(ft_control),
            "C + Δ_n": lab.acc(lab.apply(f"C+d{last}", diffs[last], control)),
            "M_n": run.base[last],
            "M_n + Δ_C": lab.acc(lab.apply(f"{last}+dC", control_diff, versions[last])),
        }
    run.findings = findings(run, pretrained=len(bed.releases))
    run.seconds = time.perf_counter() - start
    return run


def findings(run: SeedRun, *, pretrained: int) -> dict[str, bool]:
    """The paper's findings, checked on one seed.

    The stronger bases are the later half of the pretraining releases and the new release; the weak
    base is M1.
    """
    strong = [f"M{i}" for i in range(pretrained // 2 + 1, len(run.base) + 1)]
    out: dict[str, bool] = {}
    for name in strong:
        prev = f"M{int(name[1:]) - 1}"
        gain = run.matrix[name][prev] - run.base[name]
        out[f"{name} + Δ{prev[1:]} gains ≥ {STRONG_GAIN:.0f} points without training"] = gain >= STRONG_GAIN
        plain, recycled = dict(run.curves[f"FT({name})"]), dict(run.curves[f"FT({name}+Δ{prev[1:]})"])
        out[f"FT({name} + Δ{prev[1:]}) ahead of FT({name}) at step {EARLY_STEP}"] = (
            recycled[EARLY_STEP] > plain[EARLY_STEP]
        )
        out[f"FT({name} + Δ{prev[1:]}) ahead of FT({name}) on the mean of the curve"] = statistics.fmean(
            recycled.values()
        ) > statistics.fmean(plain.values())
    weak_gain = max(run.matrix["M1"].values()) - run.base["M1"]
    out[f"M1 + any Δ gains < {WEAK_GAIN:.0f} points (a weak base cannot use it)"] = weak_gain < WEAK_GAIN
    if run.control:
        c = run.control
        gains = (c["C + Δ_n"] - c["C"], c["M_n + Δ_C"] - c["M_n"])
        out[f"no transfer between lineages (both directions gain < {WEAK_GAIN:.0f} points)"] = max(gains) < WEAK_GAIN
    return out


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step at which `curve` reaches `target`, or None if it never does."""
    return next((step for step, value in curve if value >= target), None)


def write_report(
    runs: list[SeedRun], *, out: Path, setup: Setup, seconds: float, shipped: list[str] | None = None
) -> Path:
    """`report.md`, `results.json` and the plots under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps([run.__dict__ for run in runs], indent=1))
    rows = [
        {
            "seed": r.seed,
            "release": n,
            "mode": mode,
            "final": r.algorithm1[mode][n],
            "steps": setup.steps,
            "probe_steps": 0,
        }
        for r in runs
        for mode in ("none", "direct", "iterative")
        for n in list(r.base)[1:]
    ]
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plots = _plots(runs, out=out)
    lines = [
        "# The paper's effects on the Graftwork test bed",
        "",
        f"Seeds {', '.join(str(r.seed) for r in runs)}; fine-tuning {setup.steps} steps "
        f"(evaluated every {setup.eval_every}); accuracy is exact match in percent on the test bed's "
        f"`testbed_add` lm-eval task (200 held-out sums). Total time {seconds:.0f} s.",
        "",
        "## Findings, seed by seed",
        "",
        "| finding | " + " | ".join(f"seed {r.seed}" for r in runs) + " |",
        "| --- | " + " | ".join("---" for _ in runs) + " |",
    ]
    for key in runs[0].findings:
        lines.append(f"| {key} | " + " | ".join("held" if r.findings.get(key) else "**failed**" for r in runs) + " |")
    lines += ["", "## Transfer matrix (paper Table 3)", "", *_matrix_table(runs)]
    lines += ["", "## Learning curves (paper Figure 2)", "", *_curve_table(runs), "", f"![curves]({plots[0]})"]
    lines += ["", "## Algorithm 1 (paper Table 6, Figure 3)", "", *_algorithm1_table(runs), "", f"![alg1]({plots[1]})"]
    if runs[0].control:
        lines += ["", "## Control: a lineage from another initialisation", "", *_control_table(runs)]
    if shipped is not None:
        verdict = "bit for bit the shipped bed" if not shipped else "**not** the shipped bed: " + "; ".join(shipped)
        lines += ["", "## The shipped test bed", "", f"Seed 0, pretrained from scratch here, is {verdict}."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def _matrix_table(runs: list[SeedRun]) -> list[str]:
    names = list(runs[0].base)
    lines = [
        "Rows: target base M_i; columns: M_i alone, M_i + Δ_j (no training), FT(M_i). Mean ± sd over seeds.",
        "",
        "| target | M_i | " + " | ".join(f"+Δ{n[1:]}" for n in names) + " | FT(M_i) |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for t in names:
        cells = [_spread([r.matrix[t][s] for r in runs]) if s != t else "–" for s in names]
        base, ft = _spread([r.base[t] for r in runs]), _spread([r.finetuned[t] for r in runs])
        lines.append(f"| {t} | {base} | " + " | ".join(cells) + f" | {ft} |")
    return lines


def _curve_table(runs: list[SeedRun]) -> list[str]:
    names = list(runs[0].base)[1:]
    lines = [
        f"Accuracy at step {EARLY_STEP}, mean of the curve, and the first evaluated step at which each run "
        "reaches FT(M_i)'s final accuracy (– : never within the budget).",
        "",
        "| M_i | FT(M_i) @50 | FT(M_i+Δ_{i−1}) @50 | FT(M_i) mean | FT(M_i+Δ_{i−1}) mean | steps FT(M_i) "
        "| steps FT(M_i+Δ_{i−1}) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        prev = f"Δ{int(n[1:]) - 1}"
        plain = [r.curves[f"FT({n})"] for r in runs]
        recycled = [r.curves[f"FT({n}+{prev})"] for r in runs]
        at = [_spread([dict(c).get(EARLY_STEP, float("nan")) for c in cs]) for cs in (plain, recycled)]
        mean = [_spread([statistics.fmean(v for _, v in c) for c in cs]) for cs in (plain, recycled)]
        reach = [
            ", ".join(str(steps_to_reach(c, p[-1][1]) or "–") for c, p in zip(cs, plain, strict=True))
            for cs in (plain, recycled)
        ]
        lines.append(f"| {n} | {at[0]} | {at[1]} | {mean[0]} | {mean[1]} | {reach[0]} | {reach[1]} |")
    return lines


def _algorithm1_table(runs: list[SeedRun]) -> list[str]:
    names = list(runs[0].base)
    lines = [
        "Accuracy after fine-tuning each version: plain FT(M_i), direct FT(M_i + Δ_{i−1}) and iterative "
        "FT(M_i + Δ*_{i−1}), Δ* carrying every earlier version's fine-tuning.",
        "",
        "| mode | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for mode in ("none", "direct", "iterative"):
        lines.append(f"| {mode} | " + " | ".join(_spread([r.algorithm1[mode][n] for r in runs]) for n in names) + " |")
    wins = sum(r.algorithm1["iterative"][n] > r.algorithm1["direct"][n] for r in runs for n in names[2:])
    ties = sum(r.algorithm1["iterative"][n] == r.algorithm1["direct"][n] for r in runs for n in names[2:])
    total = len(runs) * len(names[2:])
    lines += [
        "",
        f"Iterative against direct, as measured (M3 onward, all seeds): {wins} wins, {ties} ties, "
        f"{total - wins - ties} losses out of {total}. Not asserted.",
    ]
    return lines


def _control_table(runs: list[SeedRun]) -> list[str]:
    keys = list(runs[0].control)
    return [
        "| " + " | ".join(keys) + " |",
        "| " + " | ".join("---" for _ in keys) + " |",
        "| " + " | ".join(_spread([r.control[k] for r in runs]) for k in keys) + " |",
    ]


def _plots(runs: list[SeedRun], *, out: Path) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs[0].base)[1:]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), sharey=True)
    for ax, n in zip(axes, names, strict=True):
        prev = f"Δ{int(n[1:]) - 1}"
        for r in runs:
            for key, style in ((f"FT({n})", "--"), (f"FT({n}+{prev})", "-")):
                xs, ys = zip(*r.curves[key], strict=True)
                ax.plot(
                    xs, ys, style, color="C0" if style == "--" else "C1", alpha=0.7, label=key if r is runs[0] else None
                )
        ax.set_title(n)
        ax.set_xlabel("fine-tuning step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("exact match %")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    all_names = list(runs[0].base)
    for mode in ("none", "direct", "iterative"):
        ys = [statistics.fmean(r.algorithm1[mode][n] for r in runs) for n in all_names]
        ax.plot(all_names, ys, marker="o", label=mode)
    ax.set_ylabel("exact match % after FT (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "algorithm1.png", dpi=100)
    plt.close(fig)
    return "curves.png", "algorithm1.png"


# -- recycle.mode: auto ------------------------------------------------------------------------------

PROBES = {
    "zero_shot": Probe(kind="zero_shot"),
    "heldout_loss": Probe(kind="heldout_loss"),
    "short_finetune": Probe(kind="short_finetune"),
}
FIXED = ("none", "direct", "iterative")
TOP = "zero_shot_top"  # zero_shot's highest score, with no paired check against the plain release


@dataclass
class AutoRun:
    """One seed's modes (accuracy after the full fine-tune, percent), every start's accuracy, each probe's
    pick and cost, and the pre-checks."""

    seed: int
    probe: str = "heldout_loss"
    modes: dict[str, dict[str, float]] = field(default_factory=dict)
    starts: dict[str, dict[str, float]] = field(default_factory=dict)
    picks: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    prechecks: dict[str, dict[str, object]] = field(default_factory=dict)
    control: dict[str, object] = field(default_factory=dict)
    full_seconds: float = 0.0
    seconds: float = 0.0


def auto_run(
    *, seed: int, setup: Setup, root: Path, beds: Path, control: Path | None, default: str = Probe().kind
) -> AutoRun:
    """none, direct, iterative and auto over M2..M5 on one seed's bed, every start fully fine-tuned.

    auto's own chain follows the `default` probe's picks (Δ^iter is auto's previous candidate minus its base);
    the other probes are scored on the same starts. Fine-tunes are shared where two modes start from the same
    weights (a fine-tune is deterministic for a start), and found again in the work folder by name: those that
    start from auto's own chain carry the probe's name.
    """
    began = time.perf_counter()
    bed = build(seed=seed, setup=setup, beds=beds, own_control=control is None)
    control = control or bed.control
    lab = Lab(bed=bed, work=root / f"auto-seed{seed}", setup=setup)
    saved = lab.work / f"run-{setup.steps}-{default}.json"
    if saved.is_file():  # a finished seed is not measured again (the control's pre-check is)
        run = AutoRun(**json.loads(saved.read_text()))
        if control is not None:
            run.control = _control_check(bed=bed, lab=lab, control=control)
        return run
    run = AutoRun(seed=seed, probe=default)
    psuite = probe_suite(bed=bed, suite=lab.suite, out=lab.work / "probe-task", examples=Probe().examples)
    versions = {f"M{i}": p for i, p in enumerate((*bed.releases, bed.new_release), 1)}
    names = list(versions)
    done: dict[str, Path] = {}
    full_times: list[float] = []

    def ft(name: str, model: Path) -> Path:
        if name not in done and (lab.work / "ft" / name / "config.json").is_file():
            done[name] = lab.work / "ft" / name
        if name not in done:
            t = time.perf_counter()
            done[name] = lab.finetune(name, model, curve=False)[0]
            full_times.append(time.perf_counter() - t)
        return done[name]

    plain = {n: ft(f"{n}", versions[n]) for n in names}
    dirs = {n: lab.diff(f"dir-{n}", plain[n], versions[n]) for n in names}
    star = {"iterative": plain[names[0]], "auto": plain[names[0]]}
    for mode in (*FIXED, "auto"):
        run.modes[mode] = {}
    for prev, name in itertools.pairwise(names):
        base = versions[name]
        run.modes["none"][name] = lab.acc(plain[name])
        run.modes["direct"][name] = lab.acc(ft(f"{name}+dir@1", lab.apply(f"{name}+dir@1", dirs[prev], base)))
        chain = lab.diff(f"iter-{prev}", star["iterative"], versions[prev])
        star["iterative"] = ft(f"{name}+iterative", lab.apply(f"{name}+iterative", chain, base))
        run.modes["iterative"][name] = lab.acc(star["iterative"])
        # auto: the pre-check, the starts, every start fine-tuned in full, each probe's pick.
        check = precheck(previous_base=versions[prev], base=base, diff=dirs[prev])
        run.prechecks[name] = check.model_dump(mode="json")
        auto_iter = lab.diff(f"auto-iter-{prev}", star["auto"], versions[prev])
        diffs: dict[str, Path] = {"dir": dirs[prev]}
        if prev != names[0]:  # at M2, Δ^iter is Δ^dir
            diffs["iter"] = auto_iter
        starts = make_starts(base=base, diffs=diffs, alphas=Probe().alphas, out=lab.work / "starts" / name,
                             overwrite=True)  # fmt: skip
        fts = {s: f"{name}+{s}" + (f"~{default}" if s.startswith("iter") else "") for s in starts}
        fts[PLAIN] = name
        finals = {s: lab.acc(ft(fts[s], path)) for s, path in starts.items()}
        run.starts[name] = finals
        picks = {}
        for kind, probe in PROBES.items():
            result = score_starts(
                starts=starts, probe=probe, recipe=lab.recipe, data=bed.train_data,
                work=lab.work / "probes" / name / kind, suite=psuite, threads=setup.threads,
            )  # fmt: skip
            picks[kind] = _pick(result, chosen=result.chosen, finals=finals)
            if kind == "zero_shot":  # the same scores, read without the paired check against plain
                picks[TOP] = _pick(result, chosen=choose({s: v.score for s, v in result.scores.items()}), finals=finals)
        run.picks[name] = picks
        chosen = PLAIN if check.lineage_broken else str(picks[default]["chosen"])
        run.modes["auto"][name] = finals[chosen]
        star["auto"] = done[fts[chosen]]
    run.full_seconds = statistics.fmean(full_times or [math.nan])
    run.seconds = time.perf_counter() - began
    saved.write_text(json.dumps(run.__dict__))
    if control is not None:
        run.control = _control_check(bed=bed, lab=lab, control=control)
    return run


def _pick(result: ProbeResult, *, chosen: str, finals: dict[str, float]) -> dict[str, object]:
    check = result.versus_plain
    return {
        "chosen": chosen,
        "final": finals[chosen],
        "scores": {s: v.score for s, v in result.scores.items()},
        "versus_plain": None if check is None else check.model_dump(mode="json"),
        "probe_steps": result.probe_steps,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
    }


def _control_check(*, bed: Testbed, lab: Lab, control: Path) -> dict[str, object]:
    """The pre-check of the last pretraining release's Δ onto a model from another initialisation: auto must
    fall back to the plain release."""
    last = bed.releases[-1]
    diff = lab.work / "diffs" / f"dir-M{len(bed.releases)}"
    check = precheck(previous_base=last, base=control, diff=diff)
    return {
        "control": str(control),
        "precheck": check.model_dump(mode="json"),
        "auto_start": PLAIN if check.lineage_broken else "a recycled start",
    }


def auto_rows(runs: list[AutoRun], *, setup: Setup) -> list[dict[str, object]]:
    """results.json: one row per seed, release and mode."""
    rows: list[dict[str, object]] = []
    for r in runs:
        for name in r.modes["none"]:
            for mode in (*FIXED, "auto"):
                probe = r.picks[name][r.probe]["probe_steps"] if mode == "auto" else 0
                rows.append({"seed": r.seed, "release": name, "mode": mode, "final": r.modes[mode][name],
                             "steps": setup.steps, "probe_steps": probe})  # fmt: skip
    return rows


def auto_report(runs: list[AutoRun], *, out: Path, setup: Setup, seconds: float) -> Path:
    """`auto.md`, `auto.json` and `results.json` under `out`: the targets, checked, and each probe's record."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(auto_rows(runs, setup=setup), indent=1))
    (out / "auto.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    names = list(runs[0].modes["none"])
    cases = [(r, n) for r in runs for n in names]
    best = {(r.seed, n): max(r.modes[m][n] for m in FIXED) for r, n in cases}
    near = sum(r.modes["auto"][n] >= best[(r.seed, n)] - 2 for r, n in cases)
    below = [(r.seed, n) for r, n in cases if r.modes["auto"][n] < r.modes["none"][n] - 2]
    means = {m: statistics.fmean(r.modes[m][n] for r, n in cases) for m in (*FIXED, "auto")}
    lines = [
        "# recycle.mode: auto on the test bed",
        "",
        f"Seeds {', '.join(str(r.seed) for r in runs)}; releases {', '.join(names)}; full fine-tune {setup.steps} "
        f"steps; exact match in percent on `testbed_add` (200 eval sums). auto's probe: {runs[0].probe}; "
        f"α in {list(Probe().alphas)}. Total time {seconds:.0f} s.",
        "",
        "| seed | release | " + " | ".join((*FIXED, "auto")) + " | auto's start | best start (all fine-tuned) |",
        "| --- | --- | " + " | ".join("---" for _ in (*FIXED, "auto")) + " | --- | --- |",
    ]
    for r, n in cases:
        top = max(r.starts[n].values())
        winners = ", ".join(s for s, v in r.starts[n].items() if v == top)
        lines.append(
            f"| {r.seed} | {n} | "
            + " | ".join(f"{r.modes[m][n]:.1f}" for m in (*FIXED, "auto"))
            + f" | {r.picks[n][r.probe]['chosen']} | {winners} ({top:.1f}) |"
        )
    lines += [
        "",
        "| mean | | " + " | ".join(f"{means[m]:.1f}" for m in (*FIXED, "auto")) + " | | |",
        "",
        "## Targets",
        "",
        f"- auto within 2 points of the best fixed mode: {near} of {len(cases)} (target ≥ 10 of 12): "
        f"**{'held' if near >= len(cases) - 2 else 'failed'}**",
        f"- auto never more than 2 points below plain FT: {'held' if not below else '**failed** at ' + str(below)}",
        f"- auto's mean above every fixed mode's: "
        f"{'held' if means['auto'] > max(means[m] for m in FIXED) else '**failed**'}",
        "",
        "## Probes: how often each picked the true winner, and what it cost",
        "",
        "A pick counts as right when its start's final accuracy equals the best start's (ties count). Cost: "
        "probe optimizer steps and wall time against one full fine-tune "
        f"(mean {statistics.fmean(r.full_seconds for r in runs):.1f} s) .",
        "",
        "| probe | release | right picks | mean points lost to the best start | probe steps / full steps | "
        "probe seconds / full fine-tune |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in (*PROBES, TOP):
        for n in names:
            right = sum(r.picks[n][kind]["final"] == max(r.starts[n].values()) for r in runs)
            lost = statistics.fmean(max(r.starts[n].values()) - r.picks[n][kind]["final"] for r in runs)
            steps = statistics.fmean(r.picks[n][kind]["probe_steps"] / setup.steps for r in runs)
            secs = statistics.fmean(r.picks[n][kind]["seconds"] / r.full_seconds for r in runs)
            lines.append(f"| {kind} | {n} | {right}/{len(runs)} | {lost:.1f} | {steps:.2f} | {secs:.2f} |")
    lines += ["", "## Pre-check", "", "| seed | pair | base_shift | shift / ‖Δ‖ | cosine | lineage_broken |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in runs:
        checks = [(f"M{int(n[1:]) - 1}→{n}", c) for n, c in r.prechecks.items()]
        if r.control:
            checks.append(("M4→control", r.control["precheck"]))
        for pair, c in checks:
            o = c["overall"]  # type: ignore[index]
            lines.append(f"| {r.seed} | {pair} | {o['base_shift']:.3f} | {o['shift_to_diff']:.2f} | "
                         f"{o['cosine']:+.3f} | {c['lineage_broken']} |")  # type: ignore[index]  # fmt: skip
    report = out / "auto.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _build_one(args: tuple[int, Setup, Path, bool]) -> Testbed:
    seed, setup, beds, own_control = args
    return build(seed=seed, setup=setup, beds=beds, own_control=own_control)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, shorter fine-tuning, no control (< 2 min)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replicate"))
    parser.add_argument("--beds", type=Path, default=Path("benchmarks/.cache/testbeds"), help="test bed cache")
    parser.add_argument("--jobs", type=int, default=3, help="seeds run at once, one process and one thread each")
    parser.add_argument("--auto", action="store_true", help="measure recycle.mode: auto (auto.md, auto.json)")
    parser.add_argument("--steps", type=int, help="override the full fine-tune's steps")
    parser.add_argument("--probe", choices=list(PROBES), default=Probe().kind, help="the probe auto follows")
    parser.add_argument("--dpo", action="store_true", help="measure SFT → DPO carried over (dpo.md, dpo.json)")
    ns = parser.parse_args(argv)
    setup = QUICK if ns.quick else FULL
    if ns.seeds:
        setup = Setup(**{**setup.__dict__, "seeds": tuple(dict.fromkeys(ns.seeds))})
    if ns.steps:
        setup = Setup(**{**setup.__dict__, "steps": ns.steps})
    if ns.auto:  # the shipped seed-0 bed serves; other seeds are pretrained (and cached under --beds)
        setup = Setup(**{**setup.__dict__, "from_scratch": False, "new_release": True})
    start = time.perf_counter()
    seeds = setup.seeds
    jobs = max(1, min(ns.jobs, len(seeds)))
    if ns.dpo:  # the shipped seed-0 bed
        from carry_dpo import main_dpo  # beside this script

        report = main_dpo(bed=build_testbed(out=ns.beds / "seed0", seed=0, control=False), out=ns.out)
        print(report.read_text())
        return 0
    if ns.auto:
        return _main_auto(setup=setup, out=ns.out, beds=ns.beds, jobs=jobs, probe=ns.probe)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # With several seeds, each seed's control is the next seed's last release: another initialisation.
        shared = len(seeds) > 1
        beds = list(pool.map(_build_one, [(s, setup, ns.beds, setup.control and not shared) for s in seeds]))
        controls = [beds[(k + 1) % len(beds)].releases[-1] if shared else None for k in range(len(beds))]
        futures = [
            pool.submit(run_seed, seed=s, setup=setup, root=ns.out / "work", beds=ns.beds, control=c)
            for s, c in zip(seeds, controls, strict=True)
        ]
        runs = [f.result() for f in futures]
    for run in runs:
        print(f"seed {run.seed}: {run.seconds:.0f} s", file=sys.stderr)
    checked = [unexplained(differences(bed.root)) for bed in beds if bed.seed == 0] if setup.from_scratch else []
    shipped = checked[0] if checked else None
    report = write_report(runs, out=ns.out, setup=setup, seconds=time.perf_counter() - start, shipped=shipped)
    print(report.read_text())
    return 1 if shipped else 0


def _main_auto(*, setup: Setup, out: Path, beds: Path, jobs: int, probe: str) -> int:
    start = time.perf_counter()
    seeds = setup.seeds
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        shared = len(seeds) > 1
        built = list(pool.map(_build_one, [(s, setup, beds, not shared) for s in seeds]))
        controls = [built[(k + 1) % len(built)].releases[-1] if shared else None for k in range(len(built))]
        futures = [
            pool.submit(auto_run, seed=s, setup=setup, root=out / "work", beds=beds, control=c, default=probe)
            for s, c in zip(seeds, controls, strict=True)
        ]
        runs = [f.result() for f in futures]
    for run in runs:
        print(f"seed {run.seed}: {run.seconds:.0f} s", file=sys.stderr)
    report = auto_report(runs, out=out, setup=setup, seconds=time.perf_counter() - start)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
