"""Fine-tuning: loss on completions only, deterministic on the CPU, a normal model folder out."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from graftwork.errors import FinetuneConfigError, FinetuneDataError
from graftwork.tasks.suite import Suite
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.data import read_pairs
from graftwork.tasks.training.finetune import IGNORE, FinetuneResult, finetune, tokenize_pair
from graftwork.tasks.training.recipe import Recipe
from tests.conftest import bits_equal, load_state


def test_labels_are_ignored_on_the_prompt_only_when_asked(testbed: Testbed) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(testbed.releases[0]))
    prompt, completion = "\nq: 3+4?\na: ", "7\n"
    ex = tokenize_pair(tokenizer=tok, prompt=prompt, completion=completion, recipe=Recipe())
    assert tok.decode(ex["input_ids"]) == prompt + completion
    assert ex["labels"] == [IGNORE] * len(prompt) + ex["input_ids"][len(prompt) :]
    full = tokenize_pair(tokenizer=tok, prompt=prompt, completion=completion, recipe=Recipe(completion_only=False))
    assert full["labels"] == full["input_ids"]
    cut = tokenize_pair(tokenizer=tok, prompt=prompt, completion=completion, recipe=Recipe(seq_len=5))
    assert len(cut["input_ids"]) == len(cut["labels"]) == 5
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}a: {% endif %}"
    )
    chat = tokenize_pair(tokenizer=tok, prompt="3+4?", completion="7", recipe=Recipe(chat_template=True))
    assert tok.decode(chat["input_ids"]) == "u: 3+4?\na: 7\n"
    asked = len("u: 3+4?\na: ")
    assert chat["labels"] == [IGNORE] * asked + chat["input_ids"][asked:]


def test_same_seed_gives_bit_identical_weights(testbed: Testbed, tmp_path: Path) -> None:
    runs = [
        finetune(
            model_dir=testbed.releases[1],
            data=testbed.train_data,
            recipe=Recipe(steps=6, seed=seed),
            out_dir=tmp_path / name,
            threads=1,
        )
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    a, b, c = (load_state(r.out_dir) for r in runs)
    base = load_state(testbed.releases[1])
    assert all(bits_equal(a[k], b[k]) for k in a)
    assert not all(bits_equal(a[k], c[k]) for k in a)
    assert not all(bits_equal(a[k], base[k]) for k in a)
    assert runs[0].loss_curve == runs[1].loss_curve and [s for s, _ in runs[0].loss_curve] == list(range(1, 7))


def test_output_is_a_normal_model_folder_without_optimizer_state(
    finetuned_m4: FinetuneResult, testbed: Testbed
) -> None:
    names = {p.name for p in finetuned_m4.out_dir.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    base = load_state(testbed.releases[-1])
    ft = load_state(finetuned_m4.out_dir)
    assert {k: (v.dtype, v.shape) for k, v in ft.items()} == {k: (v.dtype, v.shape) for k, v in base.items()}
    assert (finetuned_m4.out_dir / "generation_config.json").read_bytes() == (
        testbed.releases[-1] / "generation_config.json"
    ).read_bytes()


@pytest.mark.slow
def test_fine_tuning_teaches_the_skill_and_reports_its_curves(finetuned_m4: FinetuneResult) -> None:
    steps = [s for s, _ in finetuned_m4.eval_curve]
    assert steps == [0, 50, 100]
    acc = [records[0].value for _, records in finetuned_m4.eval_curve]
    assert acc[0] < 0.05, "the base must lack the skill in the fine-tuning form"
    assert acc[-1] >= 0.6, acc
    losses = [loss for _, loss in finetuned_m4.loss_curve]
    assert len(losses) == 100 and sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_bad_data_and_arguments_are_clear_errors(testbed: Testbed, testbed_suite: Suite, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n{"prompt": 3}\n')
    with pytest.raises(FinetuneDataError, match=r"bad.jsonl:2 needs string fields"):
        read_pairs(data=bad)
    bad.write_text("\n")
    with pytest.raises(FinetuneDataError, match="holds no examples"):
        read_pairs(data=bad)
    with pytest.raises(FinetuneConfigError, match="eval_suite"):
        finetune(
            model_dir=testbed.releases[0],
            data=testbed.train_data,
            recipe=Recipe(),
            out_dir=tmp_path / "o",
            eval_every=5,
        )
    with pytest.raises(ValidationError):
        Recipe(steps=-1)
    with pytest.raises(ValidationError):
        Recipe().steps = 3  # type: ignore[misc]
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
def test_bf16_on_a_gpu_learns_and_keeps_the_bases_dtype(testbed: Testbed, testbed_suite: Suite, tmp_path: Path) -> None:
    from graftwork.tasks.evaluate import evaluate

    result = finetune(
        model_dir=testbed.releases[-1],
        data=testbed.train_data,
        recipe=Recipe(steps=100, precision="bf16", deterministic=False),
        out_dir=tmp_path / "bf16",
    )
    losses = [loss for _, loss in result.loss_curve]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    base = load_state(testbed.releases[-1])
    assert all(v.dtype == base[k].dtype for k, v in load_state(result.out_dir).items())
    (record,) = evaluate(model_dir=result.out_dir, suite=testbed_suite.model_copy(update={"device": "cuda"}))
    assert record.value >= 0.5


def test_progress_is_reported_after_every_step(testbed: Testbed, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    finetune(
        model_dir=testbed.releases[0],
        data=testbed.train_data,
        recipe=Recipe(steps=3, warmup_steps=0),
        out_dir=tmp_path / "ft",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
