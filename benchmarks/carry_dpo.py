"""Does a preference-tuned Δ carry over? SFT then DPO on the test bed, measured with the pieces a recycle run uses
(the staged fine-tune, the engine's diff and transfer, the lm-eval suite), for each release pair M_{i−1} → M_i:

- M_i, and M_i + Δ with no training, where Δ = FT(M_{i−1}) − M_{i−1} is the SFT → DPO track's diff vector, next to
  M_i + Δ_SFT, the diff of SFT alone (so that what the DPO stage adds to the Δ shows apart from what SFT adds);
- FT(M_i + Δ), the same stages from the carried start (Algorithm 1's "then fine-tune briefly");
- FT(M_i), plain SFT → DPO on the new base with the same stages and steps.

Each is scored by held-out preference accuracy (the correct sum likelier than a near miss: `testbed_add_pref`) and
exact match (`testbed_add`). Run by `python benchmarks/replicate.py --dpo [--out DIR]`; it writes `dpo.md` and
`dpo.json` there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from graftwork.tasks import engine
from graftwork.tasks.evaluate import evaluate
from graftwork.tasks.suite import Suite
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.finetune import finetune
from graftwork.tasks.training.recipe import Recipe

SFT_STEPS, DPO_STEPS, BETA = 50, 100, 0.1
ROWS = (
    ("base", "M_i"),
    ("carried_sft", "M_i + Δ_SFT (no training)"),
    ("carried", "M_i + Δ_SFT→DPO (no training)"),
    ("plain", "FT(M_i), SFT → DPO"),
    ("recycled", "FT(M_i + Δ), SFT → DPO"),
)


@dataclass(frozen=True)
class Pair:
    """One release pair's scores: for each row of `ROWS`, (preference accuracy, exact match) in percent."""

    source: str
    target: str
    scores: dict[str, tuple[float, float]]


def staged_recipe(*, bed: Testbed) -> Recipe:
    """The SFT → DPO track's recipe: 50 SFT steps on the bed's pairs, then 100 DPO steps on its preference pairs."""
    return Recipe.model_validate(
        {
            "steps": SFT_STEPS,
            "seed": bed.seed,
            "stages": [
                {"kind": "sft"},
                {"kind": "dpo", "data": str(bed.preference_data), "steps": DPO_STEPS, "beta": BETA},
            ],
        }
    )


def carry_pairs(*, bed: Testbed, work: Path, threads: int = 2) -> list[Pair]:
    """Every pair M_{i−1} → M_i of `bed`'s releases, measured in the folder `work`."""
    suite = Suite(name="prefs", tasks=(bed.preference_task, bed.generate_task), task_dirs=(bed.task_dir,))
    staged, sft = staged_recipe(bed=bed), Recipe(steps=SFT_STEPS, seed=bed.seed)

    def tune(name: str, model: Path, recipe: Recipe) -> Path:
        return finetune(
            model_dir=model, data=bed.train_data, recipe=recipe, out_dir=work / "ft" / name, threads=threads,
            overwrite=True,
        ).out_dir  # fmt: skip

    def carry(name: str, tuned: Path, base: Path, target: Path) -> Path:
        diff = engine.diff(finetuned=tuned, base=base, out=work / "diffs" / name, overwrite=True).output
        return engine.apply(diff=diff, target=target, out=work / "transfers" / name, overwrite=True).output

    def score(model: Path) -> tuple[float, float]:
        values = {r.task: 100 * r.value for r in evaluate(model_dir=model, suite=suite)}
        return values[bed.preference_task], values[bed.generate_task]

    pairs = []
    for source, target in zip(bed.releases, bed.releases[1:], strict=False):
        s, t = source.name, target.name
        start = carry(f"{s}-to-{t}", tune(f"{s}-sft-dpo", source, staged), source, target)
        models = {
            "base": target,
            "carried_sft": carry(f"{s}-sft-to-{t}", tune(f"{s}-sft", source, sft), source, target),
            "carried": start,
            "plain": tune(f"{t}-sft-dpo", target, staged),
            "recycled": tune(f"{t}+delta-sft-dpo", start, staged),
        }
        pairs.append(Pair(source=s, target=t, scores={row: score(model) for row, model in models.items()}))
    return pairs


def dpo_report(pairs: list[Pair], *, out: Path, seconds: float) -> Path:
    """Write `dpo.md` (a table per pair, and what held) and `dpo.json` under `out`; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo.json").write_text(json.dumps([pair.__dict__ for pair in pairs], indent=2) + "\n")
    lines = [
        "# SFT → DPO carried across releases (test bed, seed 0)",
        "",
        f"Stages: SFT {SFT_STEPS} steps on the addition pairs, then DPO {DPO_STEPS} steps (β {BETA}) on preference "
        "pairs (the correct sum chosen, a near miss rejected). Scores in percent on held-out items: preference "
        "accuracy (`testbed_add_pref`: the correct sum likelier than a near miss) / exact match (`testbed_add`).",
        "",
        "| model | " + " | ".join(f"{p.source} → {p.target}" for p in pairs) + " |",
        "| --- | " + " | ".join("---" for _ in pairs) + " |",
    ]
    for key, label in ROWS:
        cells = " | ".join(f"{p.scores[key][0]:.1f} / {p.scores[key][1]:.1f}" for p in pairs)
        lines.append(f"| {label} | {cells} |")
    lines += ["", "What held, pair by pair:", ""]
    for p in pairs:
        sc = p.scores
        checks = {
            "M_i + Δ prefers the correct sum more often than M_i": sc["carried"][0] > sc["base"][0],
            "the DPO stage's part of Δ carries (M_i + Δ above M_i + Δ_SFT in preference accuracy)": (
                sc["carried"][0] > sc["carried_sft"][0]
            ),
            "FT(M_i + Δ) at least FT(M_i) in preference accuracy": sc["recycled"][0] >= sc["plain"][0],
            "FT(M_i + Δ) at least FT(M_i) in exact match": sc["recycled"][1] >= sc["plain"][1],
        }
        held = "; ".join(f"{what}: {'yes' if ok else 'no'}" for what, ok in checks.items())
        lines.append(f"- {p.source} → {p.target}: {held}")
    lines += ["", f"Measured in {seconds:.0f} s by `python benchmarks/replicate.py --dpo`.", ""]
    path = out / "dpo.md"
    path.write_text("\n".join(lines))
    return path


def main_dpo(*, bed: Testbed, out: Path) -> Path:
    """Measure every pair of `bed` and write the report under `out`."""
    start = time.perf_counter()
    pairs = carry_pairs(bed=bed, work=out / "work-dpo")
    return dpo_report(pairs, out=out, seconds=time.perf_counter() - start)
