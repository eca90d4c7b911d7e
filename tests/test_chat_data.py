"""Chat data for the built-in recipe: `messages` conversations, checked line by line before any training starts,
tokenized with the model's chat template, the loss on the assistant turns only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from graftwork.errors import FinetuneDataError
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.chat import IGNORE, tokenize_chat
from graftwork.tasks.training.data import read_examples, read_pairs
from graftwork.tasks.training.finetune import finetune
from graftwork.tasks.training.recipe import Recipe

TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('no role ' + m['role']) }}{% endif %}"
    "{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a: {% endif %}"
)
CHAT = [{"role": "user", "content": "3+4?"}, {"role": "assistant", "content": "7"}]


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        (
            [{"prompt": "a", "completion": "b"}, {"messages": CHAT}],
            "data.jsonl:2 holds conversations (messages), but line 1 holds prompt/completion pairs: a file holds one "
            "format; split it into two files (or convert one format to the other).",
        ),
        (
            [{"messages": CHAT}, {"messages": [{"role": "user", "content": "hi"}]}],
            "data.jsonl:2: the conversation has no assistant turn, so nothing to learn from; add the answer as an "
            '{"role": "assistant", ...} message, or drop the line.',
        ),
        (
            [{"messages": [{"role": "robot", "content": "x"}, *CHAT]}],
            "data.jsonl:1: message 0: role 'robot' is not one of system, user, assistant, tool.",
        ),
        (
            [{"prompt": "3+4?", "chosen": "7", "rejected": "8"}],
            "data.jsonl:1 is a preference pair (chosen/rejected); fine-tuning data holds prompt/completion pairs or "
            "messages: give preference pairs to a DPO stage.",
        ),
        ([{"messages": []}], 'data.jsonl:1: "messages" must be a non-empty list of {"role", "content"}.'),
        ([{"messages": [{"role": "user"}]}], 'data.jsonl:1: message 0: it needs string "role" and "content".'),
    ],
    ids=["mixed", "no-assistant", "unknown-role", "preference-pair", "empty", "no-content"],
)
def test_bad_chat_data_is_refused_with_the_file_the_line_and_the_fix(
    tmp_path: Path, rows: list[object], reason: str
) -> None:
    data = jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(FinetuneDataError) as refused:
        read_examples(data=data)
    assert str(refused.value) == f"{tmp_path}/{reason}"


def test_conversations_read_with_their_lines_and_pairs_stay_pairs(tmp_path: Path) -> None:
    data = jsonl(
        tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": [{"role": "system", "content": "s"}, *CHAT]}]
    )
    assert [row["line"] for row in read_examples(data=data)] == [1, 2]
    with pytest.raises(FinetuneDataError, match="holds conversations; this needs prompt/completion pairs"):
        read_pairs(data=data)


@pytest.fixture
def tokenizer(testbed: Testbed) -> object:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(testbed.releases[0]))
    tok.chat_template = TEMPLATE
    return tok


def test_the_loss_falls_on_the_assistant_turns_only(tokenizer: object) -> None:
    messages = [
        {"role": "system", "content": "add"},
        {"role": "user", "content": "3+4?"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
    ]
    example = tokenize_chat(tokenizer=tokenizer, messages=messages, recipe=Recipe(seq_len=64), where="d:1")
    decode = tokenizer.decode  # type: ignore[attr-defined]
    assert decode(example["input_ids"]) == "s: add\nu: 3+4?\na: 7\nu: 1+1?\na: 2\n"
    learned = "".join(
        decode([t]) if label != IGNORE else "·"
        for t, label in zip(example["input_ids"], example["labels"], strict=True)
    )
    assert learned == "·" * len("s: add\nu: 3+4?\na: ") + "7\n" + "·" * len("u: 1+1?\na: ") + "2\n"
    everything = tokenize_chat(
        tokenizer=tokenizer, messages=messages, recipe=Recipe(seq_len=64, completion_only=False), where="d:1"
    )
    assert everything["labels"] == everything["input_ids"]


def test_a_role_the_template_refuses_or_no_template_is_said_before_training(
    testbed: Testbed, tokenizer: object, tmp_path: Path
) -> None:
    with pytest.raises(
        FinetuneDataError, match=r"^d:3: the model's chat template refused the conversation \(no role tool\)"
    ):
        tokenize_chat(
            tokenizer=tokenizer, messages=[{"role": "tool", "content": "x"}, *CHAT], recipe=Recipe(), where="d:3"
        )
    data = jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    with pytest.raises(FinetuneDataError, match=r"chat.jsonl:1: a conversation needs the model's chat template"):
        finetune(model_dir=testbed.releases[0], data=data, recipe=Recipe(steps=1), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_with_a_chat_template_fine_tunes_on_conversations(testbed: Testbed, tmp_path: Path) -> None:
    model = tmp_path / "M1"
    shutil.copytree(testbed.releases[0], model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    rows = [
        {"messages": [{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": str(a + b)}]}
        for a in range(10)
        for b in range(10)
    ]
    result = finetune(
        model_dir=model,
        data=jsonl(tmp_path / "chat.jsonl", rows),
        recipe=Recipe(steps=5, batch_size=8),
        out_dir=tmp_path / "out",
    )
    assert len(result.loss_curve) == 5 and (tmp_path / "out" / "model.safetensors").is_file()
