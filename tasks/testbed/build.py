"""The test bed: a tiny Llama family, pretrained on the CPU from fixed seeds, with a skill to fine-tune.

`build_testbed` writes ordinary Hugging Face folders: base releases M1..Mn (successive checkpoints of
one pretraining run), a new release (continued pretraining on a shifted corpus), optionally a control
model pretrained from another initialisation, the fine-tuning data (JSONL) and a local lm-eval task
folder. A build is deterministic for a seed and cached: a second call with the same arguments returns
at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ...errors import TestbedError
from ...fs import atomic_output_dir, write_json
from . import corpus

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
VOCAB = (*SPECIAL, *corpus.ALPHABET)
GENERATE_TASK = "testbed_add"
CHOICE_TASK = "testbed_add_mc"
MANIFEST = "testbed.json"
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
    task_dir: Path

    @property
    def generate_task(self) -> str:
        """The lm-eval task that generates the answer and scores exact match."""
        return GENERATE_TASK

    @property
    def choice_task(self) -> str:
        """The lm-eval multiple-choice variant (four candidate sums)."""
        return CHOICE_TASK


def build_testbed(
    *,
    out: Path,
    seed: int = 0,
    versions: int = 4,
    control: bool = True,
    spec: PretrainSpec | None = None,
    threads: int = 1,
) -> Testbed:
    """Build the test bed under `out`, or return the one already there if it was built the same way.

    Args:
        out: the folder to build in; created atomically.
        seed: seeds the corpus, the data and the initialisation.
        versions: how many base releases M1..Mn (equally spaced checkpoints of the pretraining run).
        control: also pretrain a model from another initialisation, for the linear-connectivity control.
        spec: the pretraining set-up (default: `PretrainSpec()`).
        threads: torch CPU threads to train with.

    Raises:
        TestbedError: `versions` is not positive, `out` exists and is not a test bed folder, or the
            pretraining process failed (its output says why).
    """
    spec = spec or PretrainSpec()
    if versions < 1 or spec.steps % versions:
        raise TestbedError(
            f"versions={versions} must be positive and divide the {spec.steps} pretraining steps.", path=out
        )
    out = Path(out).resolve()
    key = _cache_key(seed=seed, versions=versions, control=control, spec=spec)
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        return _testbed(out, seed=seed, versions=versions, control=control)
    if out.exists() and not manifest.is_file():
        raise TestbedError(f"{out} exists and is not a test bed folder; choose an empty or new --out.", path=out)
    with atomic_output_dir(out, overwrite=True) as tmp:
        _write_data(tmp, seed=seed, spec=spec)
        _pretrain_pinned(tmp, seed=seed, versions=versions, control=control, spec=spec, threads=threads)
        write_json(tmp / MANIFEST, {"key": key, "seed": seed, "versions": versions, "control": control})
    return _testbed(out, seed=seed, versions=versions, control=control)


def _pretrain_pinned(root: Path, *, seed: int, versions: int, control: bool, spec: PretrainSpec, threads: int) -> None:
    """Pretrain the models in a child process whose kernels are pinned by `PINNED_NUMERICS`.

    The variables only take effect before torch starts, hence the process. Its output goes to ours.

    Raises:
        TestbedError: the child failed.
    """
    job = {"root": str(root), "seed": seed, "versions": versions, "control": control, "threads": threads}
    job["spec"] = asdict(spec)
    command = [sys.executable, "-m", "graftwork.tasks.testbed.build", json.dumps(job)]
    done = subprocess.run(command, env={**os.environ, **PINNED_NUMERICS}, check=False)
    if done.returncode:
        raise TestbedError(
            f"pretraining the test bed in {root} failed (exit {done.returncode}); its output says why.", path=root
        )


def _pretrain_job(job: dict[str, Any]) -> None:
    """The child's side of `_pretrain_pinned`."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint says nothing
    torch.set_num_threads(job["threads"])
    torch.use_deterministic_algorithms(True)
    spec = PretrainSpec(**job["spec"])
    _build_models(Path(job["root"]), seed=job["seed"], versions=job["versions"], control=job["control"], spec=spec)


def _testbed(root: Path, *, seed: int, versions: int, control: bool) -> Testbed:
    _write_tasks(root / "tasks", data=root / "data" / "eval.jsonl")
    return Testbed(
        root=root,
        seed=seed,
        releases=tuple(root / "releases" / f"M{i}" for i in range(1, versions + 1)),
        new_release=root / "releases" / f"M{versions + 1}",
        control=root / "control" if control else None,
        train_data=root / "data" / "train.jsonl",
        task_dir=root / "tasks",
    )


def _cache_key(*, seed: int, versions: int, control: bool, spec: PretrainSpec) -> str:
    """Changes when the arguments or the code that builds the test bed change."""
    h = hashlib.sha256(repr((seed, versions, control, spec, torch.__version__)).encode())
    for module in ("build.py", "corpus.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    return h.hexdigest()


def tokenizer_object() -> Any:
    """The character-level fast tokenizer (a `PreTrainedTokenizerFast`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
        model_max_length=128,
    )


def model_config() -> Any:
    """The tiny Llama's `LlamaConfig`: hidden 64, 2 layers, 4 heads, feed-forward 256, untied."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=VOCAB.index("<pad>"),
        bos_token_id=VOCAB.index("<s>"),
        eos_token_id=VOCAB.index("</s>"),
    )


def _encode(text: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def _pretrain(
    model: Any,
    *,
    seed: int,
    mix: corpus.CorpusMix,
    steps: int,
    lr: float,
    spec: PretrainSpec,
    checkpoints: dict[int, Path],
) -> None:
    """AdamW with linear warmup and cosine decay on random windows of a seeded corpus."""
    from transformers import GenerationConfig

    rng = random.Random(seed)
    ids = _encode(corpus.corpus_text(rng, mix, chars=steps * spec.batch_size * spec.seq_len // 4))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(spec.warmup, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    window = spec.seq_len + 1
    model.train()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - window, (spec.batch_size,), generator=g)
        batch = torch.stack([ids[s : s + window] for s in starts.tolist()])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step in checkpoints:
            path = checkpoints[step]
            model.save_pretrained(str(path))
            tokenizer_object().save_pretrained(str(path))
            GenerationConfig(
                eos_token_id=VOCAB.index("</s>"), pad_token_id=VOCAB.index("<pad>"), do_sample=False
            ).save_pretrained(str(path))


def _fresh_model(seed: int) -> Any:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config())


def _build_models(root: Path, *, seed: int, versions: int, control: bool, spec: PretrainSpec) -> None:
    releases = root / "releases"
    every = spec.steps // versions
    checkpoints = {every * i: releases / f"M{i}" for i in range(1, versions + 1)}
    model = _fresh_model(seed)
    _pretrain(
        model, seed=seed, mix=corpus.PRETRAIN_MIX, steps=spec.steps, lr=spec.lr, spec=spec, checkpoints=checkpoints
    )
    _pretrain(
        model,
        seed=seed + 7_777,
        mix=corpus.SHIFTED_MIX,
        steps=spec.new_release_steps,
        lr=spec.new_release_lr,
        spec=spec,
        checkpoints={spec.new_release_steps: releases / f"M{versions + 1}"},
    )
    if control:
        other = _fresh_model(seed + 1_000_003)
        _pretrain(
            other,
            seed=seed,
            mix=corpus.PRETRAIN_MIX,
            steps=spec.steps,
            lr=spec.lr,
            spec=spec,
            checkpoints={spec.steps: root / "control"},
        )


def _write_data(root: Path, *, seed: int, spec: PretrainSpec) -> None:
    data = root / "data"
    data.mkdir()
    train, test = corpus.qa_pairs(seed=seed, train=spec.train_pairs, test=spec.eval_pairs)
    rng = random.Random(seed + 1)
    _write_jsonl(data / "train.jsonl", [corpus.finetune_record(a, b) for a, b in train])
    _write_jsonl(data / "eval.jsonl", [corpus.eval_record(a, b, rng) for a, b in test])


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_tasks(folder: Path, *, data: Path) -> None:
    """The lm-eval task YAMLs, pointing at the eval JSONL by absolute path (rewritten if it moved)."""
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "metadata": {"version": 1.0},
    }
    configs = {
        GENERATE_TASK: {
            **common,
            "task": GENERATE_TASK,
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
        CHOICE_TASK: {
            **common,
            "task": CHOICE_TASK,
            "output_type": "multiple_choice",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        path = folder / f"{name}.yaml"
        text = yaml.safe_dump(config, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


if __name__ == "__main__":
    _pretrain_job(json.loads(sys.argv[1]))
