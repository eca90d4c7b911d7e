"""The test bed's probe suite for `recycle.mode: auto`: its addition task over documents that are neither eval
nor fine-tuning documents, so that scoring the starts never looks at the gate's data."""

from __future__ import annotations

import random
from pathlib import Path

from ..starts.split import read_jsonl, write_probe_task
from ..suite import Suite
from . import corpus
from .build import Testbed


def probe_suite(*, bed: Testbed, suite: Suite, out: Path, examples: int) -> Suite:
    """`testbed_add_probe` in the folder `out`: `examples` two-digit sums drawn in a seeded order from every pair
    that is in neither the bed's eval documents nor its fine-tuning data; `suite` is the bed's eval suite.

    Raises:
        SuiteError: fewer than `examples` such sums exist, or `suite` has no local task file for the bed's task.
    """
    evals = read_jsonl(bed.task_dir.parent / "data" / "eval.jsonl")
    used = {doc["prompt"] for doc in evals} | {doc["prompt"] for doc in read_jsonl(bed.train_data)}
    rng = random.Random(f"probe-{bed.seed}")
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if corpus.prompt(a, b) not in used]
    rng.shuffle(pairs)
    docs = (corpus.eval_record(a, b, rng) for a, b in pairs)
    return write_probe_task(suite=suite, task=bed.generate_task, docs=docs, exclude=evals, examples=examples, out=out)
