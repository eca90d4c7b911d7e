"""Cheap probes that score candidate starts for a release's fine-tune, and the choice among them.

`recycle.mode: auto` fine-tunes a new release M_i from the best of several starts: M_i itself, and
M_i + α·Δ for each diff and α (`make_starts`). Each start is scored by one probe (`Probe.kind`):

- `zero_shot`: the start's score on a probe suite (a task whose documents are disjoint from the gate's,
  see `split.write_probe_task`), with no training;
- `heldout_loss`: the start's completion-only loss on a held-out slice of the fine-tuning data (lower is
  better; scored as its negative);
- `short_finetune`: successive halving: every start is fine-tuned for a fraction of the recipe's steps
  (through `training.finetune`, on the data without the held-out slice), the better half (by held-out loss,
  or by the probe suite) goes on for as many steps again from where it stopped, until one is left.

Scores are "higher is better"; ties go to the start named first (put the plain release first). With the
zero_shot probe and a `confidence`, a recycled start must also beat the plain release with that confidence on
the probe's documents (a one-sided paired bootstrap and, for 0/1 scores, the exact McNemar test: `tasks.paired`):
a probe that cannot tell the starts apart (a weak base on which every start scores ~0) leaves the release to
plain fine-tuning (`choose_over_plain`).

The default, `zero_shot` with `confidence: 0.95`, is the one measured best on the test bed
(`benchmarks/replicate.py --auto`, seeds 0–2, M2..M5, every start also fine-tuned in full to know the true
winner): it picked the true winner 9 of 12 times, losing 0.9 points to it on average, with no training. Read
without the check against plain it picked 7 (4.0 lost): at M2 every start scores ~0 zero-shot (2–3 documents
of 100 apart) and its top start ended 0.5 to 31.5 points below plain fine-tuning (seed 2: 21.5 % against 53.0).
`heldout_loss` picked 8 (3.2 lost; its slice was in every earlier fine-tune's data, so it favours large α: 0 of 3
at M2), `short_finetune` 7 (4.9 lost) for 0.3–0.65 of a full fine-tune's steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import FinetuneConfigError
from ..evaluate import run_evaluation
from ..paired import paired_difference
from ..suite import Suite
from ..training.data import read_pairs
from ..training.finetune import IGNORE, finetune, tokenize_pair
from ..training.recipe import Recipe
from .choice import PLAIN, PlainCheck, ProbeResult, StartScore
from .spec import Probe
from .split import heldout_split


def choose(scores: Mapping[str, float]) -> str:
    """The name with the highest score; the first of them on a tie.

    Raises:
        FinetuneConfigError: `scores` is empty.
    """
    if not scores:
        raise FinetuneConfigError("no starts to choose from; pass at least the plain release.", field="starts")
    return max(scores, key=lambda name: (scores[name], -list(scores).index(name)))


def choose_over_plain(
    *, samples: Mapping[str, Mapping[Hashable, float]], confidence: float, resamples: int = 2000, seed: int = 0
) -> tuple[str, PlainCheck | None]:
    """The start to fine-tune from, given each start's per-document probe scores (`PLAIN` among them): the start
    with the highest mean (`choose`) if it is the plain release, or if it beats the plain release's scores with
    `confidence`: the one-sided lower bound of a paired bootstrap (`resamples` draws from seed `seed`) is above 0
    and, for 0/1 scores, the exact one-sided McNemar test agrees (the bootstrap alone is too eager on a handful
    of disagreements: 4 right answers against 0 pass it, p = 1/16); the plain release otherwise.

    Returns:
        The chosen name, and the paired check (None when the plain release scored best).

    Raises:
        FinetuneConfigError: `samples` has no `PLAIN` entry.
        ValueError: from `paired_difference`: two starts were scored on different documents, or on none.
    """
    if PLAIN not in samples:
        raise FinetuneConfigError(
            f"choosing over the plain release needs its scores; the starts are {sorted(samples)}", field="starts"
        )
    means = {name: math.fsum(values.values()) / max(1, len(values)) for name, values in samples.items()}
    top = choose(means)
    if top == PLAIN:
        return PLAIN, None
    paired = paired_difference(a=samples[top], b=samples[PLAIN], confidence=confidence, resamples=resamples, seed=seed)
    p_value = None if paired.mcnemar_p is None else paired.mcnemar_p / 2  # one-sided: top scored higher
    kept = paired.lower_bound > 0 and (p_value is None or p_value < 1 - confidence)
    check = PlainCheck(
        start=top,
        diff=paired.diff,
        lower_bound=paired.lower_bound,
        confidence=confidence,
        resamples=resamples,
        n=paired.n,
        p_value=p_value,
        kept=kept,
    )
    return (top if kept else PLAIN), check


def heldout_loss(*, model_dir: Path, data: Path, recipe: Recipe, batch_size: int = 64) -> float:
    """The mean per-token loss of the model folder `model_dir` on the `{"prompt", "completion"}` records of
    `data`, tokenized as `recipe` fine-tunes (completion only when it says so), in float32 on the CPU or the
    first GPU. Deterministic for given files.

    Raises:
        FinetuneDataError: `data` cannot be used.
        OSError, ValueError: `model_dir` is not a model folder transformers can load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = read_pairs(data=data)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples = [tokenize_pair(tokenizer=tokenizer, recipe=recipe, **p) for p in pairs]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = model.to(device).eval()
    pad = tokenizer.pad_token_id or 0
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch], device=device)
            labels = torch.tensor([e["labels"] + [IGNORE] * (width - len(e["labels"])) for e in batch], device=device)
            mask = (torch.arange(width, device=device)[None, :] < torch.tensor([len(e["input_ids"]) for e in batch],
                    device=device)[:, None]).long()  # fmt: skip
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total += float(losses)
            count += int((target != IGNORE).sum())
    return total / count if count else math.nan


def score_starts(
    *,
    starts: Mapping[str, Path],
    probe: Probe,
    recipe: Recipe,
    data: Path,
    work: Path,
    suite: Suite | None = None,
    threads: int | None = None,
) -> ProbeResult:
    """Score each of `starts` (name → model folder; the plain release first) with `probe` and choose one.

    Args:
        starts: the candidate starts, e.g. from `make_starts`.
        probe: which probe, and its size.
        recipe: the full fine-tuning recipe (short fine-tunes take its settings and a fraction of its steps).
        data: the fine-tuning data (JSONL of prompt/completion records).
        work: a folder for the held-out split and the short fine-tunes' models (created; may be removed after).
        suite: the probe suite (zero_shot, and short_finetune scored by zero_shot): documents disjoint from the
            gate's, e.g. from `split.write_probe_task`. Its first record's value is the score.
        threads: torch CPU threads for the short fine-tunes.

    Raises:
        FinetuneConfigError: `starts` is empty, or the probe needs a probe suite and none was given.
        FinetuneDataError: `data` cannot be read or is too small for `probe.examples` held-out records.
        ModelFolderError, SuiteError: from fine-tuning or evaluating a start.
    """
    began = time.perf_counter()
    if not starts:
        raise FinetuneConfigError("no starts to score; pass at least the plain release.", field="starts")
    needs_suite = probe.kind == "zero_shot" or (probe.kind == "short_finetune" and probe.score_by == "zero_shot")
    if needs_suite and suite is None:
        raise FinetuneConfigError(
            f"the {probe.kind} probe{' scored by zero_shot' if probe.kind == 'short_finetune' else ''} needs a probe "
            "suite whose documents are disjoint from the gate's (split.write_probe_task makes one); pass suite=, or "
            "use kind: heldout_loss.",
            field="suite",
        )
    work = Path(work)
    train, heldout = (None, None)
    if probe.kind != "zero_shot":
        train, heldout = heldout_split(data=data, examples=probe.examples, out=work / "split")

    per_doc: dict[str, dict[Hashable, float]] = {}

    def score(model: Path, *, by: str) -> float:
        if by == "zero_shot":
            assert suite is not None
            evaluation = run_evaluation(model_dir=model, suite=suite)
            first = evaluation.records[0]
            per_doc[str(model)] = evaluation.scores_of(task=first.task, metric=first.metric, filter=first.filter)
            return float(first.value)
        assert heldout is not None
        return -heldout_loss(model_dir=model, data=heldout, recipe=recipe)

    if probe.kind != "short_finetune":
        values = {name: score(path, by=probe.kind) for name, path in starts.items()}
        if probe.kind == "zero_shot" and probe.confidence is not None and PLAIN in starts:
            samples = {name: per_doc[str(path)] for name, path in starts.items()}
            chosen, check = choose_over_plain(samples=samples, confidence=probe.confidence)
        else:
            chosen, check = choose(values), None
        return ProbeResult(
            kind=probe.kind,
            scores={n: StartScore(path=str(p), score=values[n], curve=(), rounds=0) for n, p in starts.items()},
            chosen=chosen,
            probe_steps=0,
            evaluations=len(starts),
            full_steps=recipe.steps,
            seconds=time.perf_counter() - began,
            versus_plain=check,
        )
    assert train is not None
    step = max(1, round(probe.steps_fraction * recipe.steps))
    first = recipe.model_copy(
        update={"steps": step, "schedule": "constant_with_warmup", "warmup_steps": min(recipe.warmup_steps, step // 2)}
    )
    later = recipe.model_copy(update={"steps": step, "schedule": "constant", "warmup_steps": 0})
    current = dict(starts)
    curves: dict[str, list[tuple[int, float]]] = {n: [] for n in starts}
    last: dict[str, float] = {}
    alive, trained, evaluations, rounds = list(starts), 0, 0, 0
    while len(alive) > 1:
        for name in alive:
            out = work / "short" / f"{name}-r{rounds}"
            current[name] = finetune(
                model_dir=current[name],
                data=train,
                recipe=first if rounds == 0 else later,
                out_dir=out,
                threads=threads,
                overwrite=True,
            ).out_dir
            last[name] = score(current[name], by=probe.score_by)
            curves[name].append((step * (rounds + 1), last[name]))
            trained, evaluations = trained + step, evaluations + 1
        rounds += 1
        ranked = sorted(alive, key=lambda n: (-last[n], list(starts).index(n)))
        alive = ranked[: math.ceil(len(alive) / 2)] if len(alive) > 2 else ranked[:1]
    chosen = alive[0]
    return ProbeResult(
        kind=probe.kind,
        scores={
            n: StartScore(path=str(p), score=last.get(n, math.nan), curve=tuple(curves[n]), rounds=len(curves[n]))
            for n, p in starts.items()
        },
        chosen=chosen,
        probe_steps=trained,
        evaluations=evaluations,
        full_steps=recipe.steps,
        seconds=time.perf_counter() - began,
    )
