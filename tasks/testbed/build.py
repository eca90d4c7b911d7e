"""The test bed: a tiny Llama family, pretrained on the CPU from fixed seeds, with a skill to fine-tune.

`build_testbed` writes ordinary Hugging Face folders: base releases M1..Mn (successive checkpoints of
one pretraining run), a new release (continued pretraining on a shifted corpus), optionally a control
model pretrained from another initialisation, the fine-tuning data (JSONL; and preference pairs for a DPO
stage) and a local lm-eval task folder. A build is deterministic for a seed and cached: a second call with
the same arguments returns at once.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ...errors import TestbedError
from ...fs import atomic_output_dir, die_with_parent, resumable_output_dir, write_json
from . import corpus
from .shipped import copy_shipped, find_shipped

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
VOCAB = (*SPECIAL, *corpus.ALPHABET)
GENERATE_TASK = "testbed_add"
CHOICE_TASK = "testbed_add_mc"
PREFERENCE_TASK = "testbed_add_pref"
MANIFEST = "testbed.json"
TASK_DATA = "testbed_data"
TASK_DATA_SOURCE = '''"""The test bed's eval data for lm-eval (`custom_dataset`): the bed's own data/eval.jsonl."""

from pathlib import Path

import datasets


def eval_split(**_):
    path = Path(__file__).resolve().parents[1] / "data" / "eval.jsonl"
    return datasets.load_dataset("json", data_files={"test": str(path)})
'''
BED_FORMAT = "graftwork-testbed-4"
# The pretraining's kernels, pinned so that a seed gives the same test bed on every x86 machine: ATen's
# portable (not AVX) kernels and MKL's reproducible mode. Left to pick AVX-512 or AVX2 kernels by CPU,
# an AMD machine gave, for seed 0, bases that never learned to add (fine-tuned: 3-6 % against 80 %).
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


@dataclass(frozen=True)
class PretrainSpec:
    """How the test bed's models are pretrained. The defaults make the paper's effects show."""

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 100
    new_release_steps: int = 500
    new_release_lr: float = 1e-3
    train_pairs: int = 1000
    eval_pairs: int = 200


@dataclass(frozen=True)
class Testbed:
    """Paths of a built test bed."""

    __test__ = False  # not a pytest test class

    root: Path
    seed: int
    releases: tuple[Path, ...]
    new_release: Path
    control: Path | None
    train_data: Path
    preference_data: Path
    task_dir: Path

    @property
    def generate_task(self) -> str:
        """The lm-eval task that generates the answer and scores exact match."""
        return GENERATE_TASK

    @property
    def choice_task(self) -> str:
        """The lm-eval multiple-choice variant (four candidate sums)."""
        return CHOICE_TASK

    @property
    def preference_task(self) -> str:
        """The lm-eval held-out preference accuracy: the correct sum against one near miss (2 choices)."""
        return PREFERENCE_TASK


def build_testbed(
    *,
    out: Path,
    seed: int = 0,
    versions: int = 4,
    control: bool = True,
    spec: PretrainSpec | None = None,
    threads: int = 1,
    from_scratch: bool = False,
    environment: Mapping[str, str] | None = None,
) -> Testbed:
    """The test bed under `out`: the one already there if it was made the same way, else a copy of the
    shipped bed (seed 0, the default set-up: verified file by file; a copy killed midway is resumed, keeping
    the files it had copied), else a build from scratch.

    Args:
        out: the folder to build in; created atomically.
        seed: seeds the corpus, the data and the initialisation.
        versions: how many base releases M1..Mn (equally spaced checkpoints of the pretraining run).
        control: also pretrain a model from another initialisation, for the linear-connectivity control.
        spec: the pretraining set-up (default: `PretrainSpec()`).
        threads: torch CPU threads per pretraining process.
        from_scratch: pretrain even where the shipped bed would serve (what `graft testbed build` does).
        environment: what the pretraining processes inherit, besides `PINNED_NUMERICS` (None: nothing else,
            which pins them most; a command hands its settings' `child_environment()`).

    Raises:
        TestbedError: `versions` is not positive, `out` exists and is not a test bed folder, a shipped
            file does not match its manifest, or a pretraining process failed (its output says why).
    """
    spec = spec or PretrainSpec()
    if versions < 1 or spec.steps % versions:
        raise TestbedError(
            f"versions={versions} must be positive and divide the {spec.steps} pretraining steps.", path=out
        )
    out = Path(out).resolve()
    key = cache_key(seed=seed, versions=versions, control=control, spec=spec)
    manifest = out / MANIFEST
    if _made_as(out, key=key):
        return _testbed(out, seed=seed, versions=versions, control=control)
    if out.exists() and not manifest.is_file():
        raise TestbedError(f"{out} exists and is not a test bed folder; choose an empty or new --out.", path=out)
    shipped = (
        None if from_scratch else find_shipped(key=cache_key(seed=seed, versions=versions, control=True, spec=spec))
    )
    made = {"key": key, "seed": seed, "versions": versions, "control": control}
    if shipped is not None:
        with resumable_output_dir(out, done=lambda: _made_as(out, key=key)) as staging:
            if staging is not None:  # else another copy made it while this one waited its turn
                copy_shipped(shipped, staging, control=control)
                write_json(staging / MANIFEST, made)
        return _testbed(out, seed=seed, versions=versions, control=control)
    with atomic_output_dir(out, overwrite=True) as tmp:
        _write_data(tmp, seed=seed, spec=spec)
        _write_tasks(tmp / "tasks")
        _pretrain_pinned(
            tmp, seed=seed, versions=versions, control=control, spec=spec, threads=threads, environment=environment
        )
        write_json(tmp / MANIFEST, made)
    return _testbed(out, seed=seed, versions=versions, control=control)


def _made_as(out: Path, *, key: str) -> bool:
    """Whether `out` holds the test bed made as `key` says (its manifest, written last, names it)."""
    manifest = out / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("key") == key


def _pretrain_pinned(
    root: Path,
    *,
    seed: int,
    versions: int,
    control: bool,
    spec: PretrainSpec,
    threads: int,
    environment: Mapping[str, str] | None,
) -> None:
    """Pretrain in child processes whose kernels are pinned by `PINNED_NUMERICS` (the variables only take
    effect before torch starts, hence the processes): the main lineage, and the control beside it. Their
    output goes to ours; if one fails, the other is stopped.

    Raises:
        TestbedError: a child failed.
    """
    job = {"root": str(root), "seed": seed, "versions": versions, "threads": threads, "spec": asdict(spec)}
    lineages = ["main", "control"] if control else ["main"]
    env = {**(environment or {}), **PINNED_NUMERICS}
    module = [sys.executable, "-m", "graftwork.tasks.testbed.pretrain"]
    children = [
        subprocess.Popen([*module, json.dumps({**job, "lineage": lineage})], env=env, preexec_fn=die_with_parent())
        for lineage in lineages
    ]
    try:
        while None in (codes := [child.poll() for child in children]) and not any(codes):
            time.sleep(0.2)
    finally:
        stopped = [child.poll() is None for child in children]
        for child, stop in zip(children, stopped, strict=True):
            if stop:
                child.kill()
            child.wait()
    results = zip(lineages, children, stopped, strict=True)
    failed = [
        f"{lineage} (exit {child.returncode})" for lineage, child, stop in results if child.returncode and not stop
    ]
    if failed:
        raise TestbedError(
            f"pretraining the test bed in {root} failed: {', '.join(failed)}; its output says why.", path=root
        )


def _testbed(root: Path, *, seed: int, versions: int, control: bool) -> Testbed:
    return Testbed(
        root=root,
        seed=seed,
        releases=tuple(root / "releases" / f"M{i}" for i in range(1, versions + 1)),
        new_release=root / "releases" / f"M{versions + 1}",
        control=root / "control" if control else None,
        train_data=root / "data" / "train.jsonl",
        preference_data=root / "data" / "prefs.jsonl",
        task_dir=root / "tasks",
    )


def cache_key(*, seed: int, versions: int, control: bool, spec: PretrainSpec) -> str:
    """What a test bed is made of: its arguments and `BED_FORMAT`. Bump `BED_FORMAT` whenever the code
    that builds the bed changes what it writes (the from-scratch rebuild test says when), and ship
    the bed again (`python -m graftwork.tasks.testbed.ship`)."""
    return hashlib.sha256(repr((BED_FORMAT, seed, versions, control, spec)).encode()).hexdigest()


def _write_data(root: Path, *, seed: int, spec: PretrainSpec) -> None:
    data = root / "data"
    data.mkdir()
    train, test = corpus.qa_pairs(seed=seed, train=spec.train_pairs, test=spec.eval_pairs)
    rng = random.Random(seed + 1)
    _write_jsonl(data / "train.jsonl", [corpus.finetune_record(a, b) for a, b in train])
    _write_jsonl(data / "eval.jsonl", [corpus.eval_record(a, b, rng) for a, b in test])
    pairs = random.Random(seed + 2)
    _write_jsonl(data / "prefs.jsonl", [corpus.preference_record(a, b, pairs) for a, b in train])


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_tasks(folder: Path) -> None:
    """The lm-eval task folder: one YAML per task and the module that loads the eval data from the bed's
    own `data/eval.jsonl`, found from the module's path, so the bed works wherever it is copied."""
    common = {"test_split": "test", "doc_to_text": "{{prompt}}", "metadata": {"version": 1.0}}
    configs = {
        GENERATE_TASK: {
            "task": GENERATE_TASK,
            **common,
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
        CHOICE_TASK: {
            "task": CHOICE_TASK,
            **common,
            "output_type": "multiple_choice",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
        PREFERENCE_TASK: {  # acc: how often the correct sum is likelier than the item's first near miss
            "task": PREFERENCE_TASK,
            **common,
            "output_type": "multiple_choice",
            "doc_to_choice": "{{[answer, (choices | reject('equalto', answer) | first)]}}",
            "doc_to_target": 0,
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        text = yaml.safe_dump(config, sort_keys=False) + f"custom_dataset: !function {TASK_DATA}.eval_split\n"
        (folder / f"{name}.yaml").write_text(text)
    (folder / f"{TASK_DATA}.py").write_text(TASK_DATA_SOURCE)
