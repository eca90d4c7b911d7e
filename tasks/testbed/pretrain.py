"""Pretraining the test bed from scratch: the child processes that `build_testbed` starts with pinned
kernels (`python -m graftwork.tasks.testbed.pretrain JOB`), one per lineage, so that the main lineage
(M1..Mn and the new release) and the control pretrain side by side on two cores.

A lineage's bits depend only on its seed, the corpus and the kernels: the same job gives the same
files in any process, alone or beside the other lineage.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import torch

from . import corpus
from .build import VOCAB, PretrainSpec


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


def fresh_model(seed: int) -> Any:
    """A newly initialised tiny Llama, from a seed."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config())


def pretrain_lineage(root: Path, *, seed: int, versions: int, spec: PretrainSpec) -> None:
    """The base releases M1..Mn (equally spaced checkpoints of one run) and the new release M(n+1)
    (continued pretraining on a shifted corpus), under `root/releases`."""
    releases = root / "releases"
    every = spec.steps // versions
    checkpoints = {every * i: releases / f"M{i}" for i in range(1, versions + 1)}
    model = fresh_model(seed)
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


def pretrain_control(root: Path, *, seed: int, spec: PretrainSpec) -> None:
    """The control, `root/control`: the same corpus and schedule from another initialisation."""
    model = fresh_model(seed + 1_000_003)
    _pretrain(
        model,
        seed=seed,
        mix=corpus.PRETRAIN_MIX,
        steps=spec.steps,
        lr=spec.lr,
        spec=spec,
        checkpoints={spec.steps: root / "control"},
    )


def run_job(job: dict[str, Any]) -> None:
    """One child's work: `job` names the root, the seed, the lineage (`main` or `control`), the number of
    versions, the torch threads and the pretraining spec."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint says nothing
    torch.set_num_threads(job["threads"])
    torch.use_deterministic_algorithms(True)
    spec = PretrainSpec(**job["spec"])
    root = Path(job["root"])
    if job["lineage"] == "main":
        pretrain_lineage(root, seed=job["seed"], versions=job["versions"], spec=spec)
    else:
        pretrain_control(root, seed=job["seed"], spec=spec)


if __name__ == "__main__":
    run_job(json.loads(sys.argv[1]))
