"""The data the probes score on, kept apart from what they must not see.

- `heldout_split`: a held-out slice of the fine-tuning data (for the held-out loss probe) and the rest (what
  a probe's short fine-tune trains on), written as JSONL files in a work folder.
- `write_probe_task`: a copy of a local lm-eval task under another name, over probe documents with every one
  of the gate's eval documents taken out (for the zero-shot probe), so a probe never scores on the documents
  the gate decides on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...errors import FinetuneDataError, SuiteError
from ..suite import Suite
from ..training.data import read_pairs

HELDOUT = "heldout.jsonl"
TRAIN = "train.jsonl"
PROBE_DATA = "probe.jsonl"
PROBE_MODULE = "probe_data"
_PROBE_SOURCE = '''"""A probe task's documents for lm-eval (`custom_dataset`): probe.jsonl beside this file."""

from pathlib import Path

import datasets


def probe_split(**_):
    path = Path(__file__).resolve().parent / "probe.jsonl"
    return datasets.load_dataset("json", data_files={"test": str(path)})
'''
_DATASET_KEYS = (
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "fewshot_split",
)


def heldout_split(*, data: Path, examples: int, out: Path) -> tuple[Path, Path]:
    """Split the fine-tuning data `data` into `out/train.jsonl` and `out/heldout.jsonl`: `examples` records
    taken evenly through the file (so a file sorted by topic gives a held-out slice of every part), and
    the rest. Deterministic: the same file gives the same split.

    Returns:
        The paths of the training part and the held-out part.

    Raises:
        FinetuneDataError: `data` cannot be read, or has fewer than `examples` + 1 records (the training
            part must keep at least one); ask for fewer held-out examples.
    """
    pairs = read_pairs(data=data)
    if not 1 <= examples < len(pairs):
        raise FinetuneDataError(
            f"cannot hold out {examples} of the {len(pairs)} examples in {data}: the held-out slice needs at least "
            f"1 and the training part at least 1; set the probe's examples between 1 and {len(pairs) - 1}.",
            path=data,
        )
    picked = {(k * len(pairs)) // examples for k in range(examples)}
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = out / TRAIN, out / HELDOUT
    _write_jsonl(train, [p for i, p in enumerate(pairs) if i not in picked])
    _write_jsonl(heldout, [p for i, p in enumerate(pairs) if i in picked])
    return train, heldout


def write_probe_task(
    *,
    suite: Suite,
    task: str,
    docs: Iterable[Mapping[str, Any]],
    exclude: Iterable[Mapping[str, Any]],
    examples: int,
    out: Path,
    key: str = "prompt",
) -> Suite:
    """A suite with one task, `<task>_probe`: the local lm-eval task `task` of `suite` (its prompt, target,
    generation settings and metric) over the first `examples` of `docs` whose `key` is not the `key` of any
    document of `exclude` (the gate's eval documents), written to the folder `out`.

    Raises:
        SuiteError: `task` is not a YAML file in one of the suite's task folders, or `docs` has fewer than
            `examples` documents outside `exclude`.
    """
    source = next((d / f"{task}.yaml" for d in suite.task_dirs if (d / f"{task}.yaml").is_file()), None)
    if source is None:
        raise SuiteError(
            f"suite {suite.name!r} has no local task file {task}.yaml in {[str(d) for d in suite.task_dirs]}; a "
            "probe task is copied from a local task, so name one of its local tasks.",
            suite=suite.name,
        )
    banned = {doc[key] for doc in exclude}
    chosen: list[Mapping[str, Any]] = []
    for doc in docs:
        if len(chosen) == examples:
            break
        if doc[key] not in banned:
            chosen.append(doc)
            banned.add(doc[key])
    if len(chosen) < examples:
        raise SuiteError(
            f"only {len(chosen)} probe documents for task {task!r} are outside its eval documents, not {examples}; "
            "give more documents or ask for fewer.",
            suite=suite.name,
        )
    config = yaml.load(source.read_text(), Loader=_TaskLoader)  # a SafeLoader that keeps !function
    config = {k: v for k, v in config.items() if k not in (*_DATASET_KEYS, "custom_dataset", "include")}
    name = f"{task}_probe"
    config.update(task=name, test_split="test")
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False) + f"custom_dataset: !function {PROBE_MODULE}.probe_split\n"
    (out / f"{name}.yaml").write_text(text)
    (out / f"{PROBE_MODULE}.py").write_text(_PROBE_SOURCE)
    _write_jsonl(out / PROBE_DATA, chosen)
    return suite.model_copy(update={"name": f"{suite.name}-probe", "tasks": (name,), "task_dirs": (out,)})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one a line (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class _TaskLoader(yaml.SafeLoader):
    """A safe loader that reads lm-eval's `!function` tags as plain strings."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
