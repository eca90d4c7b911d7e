"""Preference tuning as a stage: SFT then DPO (TRL's `DPOTrainer`) on the CPU test bed, its preference data checked
line by line before any training starts, and what a staged run leaves on disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from graftwork.errors import FinetuneDataError, OutputExistsError
from graftwork.tasks.evaluate import evaluate
from graftwork.tasks.suite import Suite
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.data import read_preferences
from graftwork.tasks.training.finetune import finetune
from graftwork.tasks.training.recipe import Recipe, Stage
from tests.test_chat_data import TEMPLATE

CHOSEN = [{"role": "user", "content": "3+4?"}, {"role": "assistant", "content": "7"}]
REJECTED = [{"role": "user", "content": "3+4?"}, {"role": "assistant", "content": "8"}]


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def staged(prefs: Path, *, steps: int = 50, dpo_steps: int = 100, **more: object) -> Recipe:
    """SFT for 50 steps, then DPO for 100 from its model (the test bed's measured set-up)."""
    stages = [{"kind": "sft"}, {"kind": "dpo", "data": str(prefs), "steps": dpo_steps}]
    return Recipe.model_validate({"steps": steps, "stages": stages, **more})


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        (
            [{"prompt": "3+4?", "chosen": "7"}],
            'prefs.jsonl:1 is not a preference pair (it has chosen, prompt): a DPO stage needs "chosen" and '
            '"rejected" on every line, with a "prompt" ({"prompt": "2+2=", "chosen": "4", "rejected": "5"}), or as '
            "conversations.",
        ),
        (
            [{"prompt": "3+4?", "completion": "7"}],
            'prefs.jsonl:1 is not a preference pair (it has completion, prompt): a DPO stage needs "chosen" and '
            '"rejected" on every line, with a "prompt" ({"prompt": "2+2=", "chosen": "4", "rejected": "5"}), or as '
            "conversations.",
        ),
        (
            [{"prompt": "3+4?", "chosen": "7", "rejected": "8"}, {"chosen": CHOSEN, "rejected": REJECTED}],
            "prefs.jsonl:2 holds chosen/rejected conversations, but line 1 holds prompt/chosen/rejected strings: a "
            "file holds one format; split it into two files (or convert one format to the other).",
        ),
        (
            [{"chosen": CHOSEN, "rejected": [{"role": "user", "content": "3+4?"}]}],
            "prefs.jsonl:1: rejected: the conversation has no assistant turn, so nothing to learn from; add the "
            'answer as an {"role": "assistant", ...} message, or drop the line.',
        ),
        (
            [{"prompt": "3+4?", "chosen": "7", "rejected": REJECTED}],
            'prefs.jsonl:1: "chosen" and "rejected" are both strings (with a string "prompt") or both conversations '
            '(lists of {"role", "content"}).',
        ),
        (
            [
                {"chosen": CHOSEN, "rejected": REJECTED},
                {"prompt": CHOSEN[:1], "chosen": CHOSEN[1:], "rejected": REJECTED[1:]},
            ],
            "prefs.jsonl:2 holds chosen/rejected conversations after a prompt conversation, but line 1 holds "
            "chosen/rejected conversations: a file holds one format; split it into two files (or convert one format "
            "to the other).",
        ),
    ],
    ids=["no-rejected", "sft-pair", "mixed", "no-assistant", "string-and-list", "prompt-on-some-lines"],
)
def test_bad_preference_data_is_refused_with_the_file_the_line_and_the_fix(
    tmp_path: Path, rows: list[object], reason: str
) -> None:
    with pytest.raises(FinetuneDataError) as err:
        read_preferences(data=jsonl(tmp_path / "prefs.jsonl", rows))
    assert str(err.value) == f"{tmp_path}/{reason}"


def test_both_preference_formats_are_read_with_their_lines(tmp_path: Path) -> None:
    text = jsonl(tmp_path / "a.jsonl", [{"prompt": "3+4?", "chosen": "7", "rejected": "8"}])
    chat = jsonl(tmp_path / "b.jsonl", [{"prompt": CHOSEN[:1], "chosen": CHOSEN[1:], "rejected": REJECTED[1:]}])
    assert read_preferences(data=text) == [{"prompt": "3+4?", "chosen": "7", "rejected": "8", "line": 1}]
    assert read_preferences(data=chat) == [
        {"prompt": CHOSEN[:1], "chosen": CHOSEN[1:], "rejected": REJECTED[1:], "line": 1}
    ]


def test_a_stage_must_fit_its_kind() -> None:
    with pytest.raises(ValidationError, match="a dpo stage needs its own data"):
        Stage(kind="dpo")
    with pytest.raises(ValidationError, match="beta is DPO's; drop it from the sft stage"):
        Stage(kind="sft", beta=0.1)
    recipe = Recipe(
        steps=50, learning_rate=1e-3, stages=(Stage(kind="sft"), Stage(kind="dpo", data=Path("p"), steps=7))
    )
    assert (recipe.for_stage(recipe.stages[1]).steps, recipe.for_stage(recipe.stages[1]).learning_rate) == (7, 1e-3)
    assert recipe.total_steps == 57 and Recipe().staged() == (Stage(kind="sft"),)


def test_bad_dpo_data_stops_the_fine_tune_before_any_training(testbed: Testbed, tmp_path: Path) -> None:
    prefs = jsonl(tmp_path / "prefs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q"}])
    out = tmp_path / "out"
    with pytest.raises(FinetuneDataError, match=r"prefs.jsonl:2 is not a preference pair"):
        finetune(model_dir=testbed.releases[0], data=testbed.train_data, recipe=staged(prefs), out_dir=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.jsonl"]


@pytest.fixture(scope="module")
def preference_suite(testbed: Testbed) -> Suite:
    """The held-out preference accuracy and exact match of the test bed."""
    return Suite(name="prefs", tasks=(testbed.preference_task, testbed.generate_task), task_dirs=(testbed.task_dir,))


def scores(model: Path, suite: Suite) -> tuple[float, float]:
    records = {r.task: r.value for r in evaluate(model_dir=model, suite=suite)}
    return records["testbed_add_pref"], records["testbed_add"]


def test_sft_then_dpo_raises_held_out_preference_accuracy_over_sft_alone(
    testbed: Testbed, preference_suite: Suite, tmp_path: Path
) -> None:
    m4 = testbed.releases[-1]
    sft = finetune(model_dir=m4, data=testbed.train_data, recipe=Recipe(steps=50), out_dir=tmp_path / "sft")
    both = finetune(
        model_dir=m4, data=testbed.train_data, recipe=staged(testbed.preference_data), out_dir=tmp_path / "sft-dpo"
    )
    # Measured on the shipped seed (CPU, deterministic kernels): base 0.525, SFT 0.635, SFT then DPO 0.87.
    assert scores(m4, preference_suite)[0] == 0.525
    assert scores(sft.out_dir, preference_suite) == (0.635, 0.11)
    assert scores(both.out_dir, preference_suite) == (0.87, 0.265)
    # One curve over both stages: the SFT stage's 50 steps, then DPO's 100, starting at log 2 (chosen = rejected).
    assert [step for step, _ in both.loss_curve] == list(range(1, 151))
    assert both.loss_curve[:50] == sft.loss_curve
    assert both.loss_curve[50][1] == pytest.approx(0.6931472, abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft", "sft-dpo"]  # no stage's model left beside


def test_a_lora_dpo_stage_merges_its_adapter_into_a_full_model(testbed: Testbed, tmp_path: Path) -> None:
    recipe = staged(testbed.preference_data, steps=5, dpo_steps=5, peft={"r": 4})
    result = finetune(model_dir=testbed.releases[0], data=testbed.train_data, recipe=recipe, out_dir=tmp_path / "out")
    assert sorted(p.name for p in result.out_dir.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert [step for step, _ in result.loss_curve] == list(range(1, 11)) and result.tokens > 0


def conversation_pairs(n: int) -> list[dict[str, object]]:
    """Preference pairs as conversations: the question as the prompt, the sum chosen, the sum plus one rejected."""
    return [
        {
            "prompt": [{"role": "user", "content": f"{a}+{b}?"}],
            "chosen": [{"role": "assistant", "content": str(a + b)}],
            "rejected": [{"role": "assistant", "content": str(a + b + 1)}],
        }
        for a in range(n)
        for b in range(n)
    ]


def test_conversation_pairs_need_a_chat_template_that_takes_them_before_any_training(
    testbed: Testbed, tmp_path: Path
) -> None:
    prefs = jsonl(tmp_path / "prefs.jsonl", conversation_pairs(2))
    recipe = staged(prefs, steps=1, dpo_steps=1)
    with pytest.raises(FinetuneDataError) as err:
        finetune(model_dir=testbed.releases[0], data=testbed.train_data, recipe=recipe, out_dir=tmp_path / "out")
    assert str(err.value) == (
        f"{prefs}:1: a conversation needs the model's chat template, and its tokenizer has none; give the data as "
        "prompt/completion pairs, or a model whose tokenizer_config.json has a chat_template."
    )
    model = with_template(testbed, tmp_path / "M1")
    bad = jsonl(
        tmp_path / "bad.jsonl",
        [*conversation_pairs(1), {**conversation_pairs(1)[0], "prompt": [{"role": "tool", "content": "x"}]}],
    )
    with pytest.raises(
        FinetuneDataError, match=r"bad.jsonl:2: the model's chat template refused the conversation \(no role tool\)"
    ):
        finetune(
            model_dir=model, data=testbed.train_data, recipe=staged(bad, steps=1, dpo_steps=1), out_dir=tmp_path / "out"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M1", "bad.jsonl", "prefs.jsonl"]


def test_a_dpo_stage_trains_on_conversation_pairs_with_the_chat_template(testbed: Testbed, tmp_path: Path) -> None:
    model = with_template(testbed, tmp_path / "M1")
    prefs = jsonl(tmp_path / "prefs.jsonl", conversation_pairs(10))
    result = finetune(
        model_dir=model, data=testbed.train_data, recipe=staged(prefs, steps=2, dpo_steps=3), out_dir=tmp_path / "out"
    )
    assert [step for step, _ in result.loss_curve] == [1, 2, 3, 4, 5]
    assert result.loss_curve[2][1] == pytest.approx(0.6931472, abs=1e-6)  # DPO's first step: policy = reference


def with_template(testbed: Testbed, model: Path) -> Path:
    """A copy of the bed's M1 whose tokenizer has the chat template of `tests/test_chat_data.py`."""
    shutil.copytree(testbed.releases[0], model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return model


def test_a_stage_that_fails_leaves_nothing_beside_the_output(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dpo stage dies (as a run killed by an out-of-memory error would): the sft stage's model, named as an
    unfinished output of this process, is removed, and the output was never made."""
    import graftwork.tasks.training.finetune as module

    seen: list[str] = []

    def dies(run: object, **_: object) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())
        raise MemoryError("CUDA out of memory")

    monkeypatch.setattr(module, "train_dpo", dies)
    with pytest.raises(MemoryError):
        finetune(model_dir=testbed.releases[0], data=testbed.train_data, recipe=staged(testbed.preference_data,
                 steps=2, dpo_steps=2), out_dir=tmp_path / "out")  # fmt: skip
    assert [name for name in seen if name != "out"] == [f".out.partial-{os.getpid()}-stage1sft"]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_or_a_prompt_too_long_is_refused_before_any_training(
    testbed: Testbed, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="out exists; pass overwrite to replace it"):
        finetune(model_dir=testbed.releases[0], data=testbed.train_data, recipe=staged(testbed.preference_data),
                 out_dir=tmp_path / "out")  # fmt: skip
    prefs = jsonl(tmp_path / "prefs.jsonl", [{"prompt": "q: 1+1?", "chosen": "2", "rejected": "3"}] * 2)
    recipe = staged(prefs, seq_len=6)
    with pytest.raises(FinetuneDataError) as err:
        finetune(model_dir=testbed.releases[0], data=testbed.train_data, recipe=recipe, out_dir=tmp_path / "new")
    assert str(err.value) == (
        f"{prefs}:1: the prompt is 7 tokens and the recipe's seq_len is 6, which leaves no room for the answers; "
        "raise seq_len or shorten the prompt."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "prefs.jsonl"]


def test_the_eval_curve_counts_steps_over_every_stage(
    testbed: Testbed, preference_suite: Suite, tmp_path: Path
) -> None:
    result = finetune(
        model_dir=testbed.releases[0], data=testbed.train_data, recipe=staged(testbed.preference_data, steps=3,
        dpo_steps=4), out_dir=tmp_path / "out", eval_every=2, eval_suite=preference_suite,
    )  # fmt: skip
    assert [step for step, _ in result.eval_curve] == [0, 2, 4, 6, 7]
    assert [step for step, _ in result.loss_curve] == list(range(1, 8))


def test_a_dpo_stage_keeps_the_start_tokenizer_and_pad_ids(testbed: Testbed, tmp_path: Path) -> None:
    """A base without a pad token (as Llama 3's): TRL gives its tokenizer one; the output's is still the base's."""
    model = tmp_path / "M1"
    shutil.copytree(testbed.releases[0], model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "pad_token"}))
    before = json.loads((model / "config.json").read_text())["pad_token_id"]
    result = finetune(model_dir=model, data=testbed.train_data, recipe=staged(testbed.preference_data, steps=1,
                      dpo_steps=1), out_dir=tmp_path / "out")  # fmt: skip
    assert "pad_token" not in json.loads((result.out_dir / "tokenizer_config.json").read_text())
    assert json.loads((result.out_dir / "config.json").read_text())["pad_token_id"] == before
