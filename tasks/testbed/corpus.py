"""The test bed's text: a pretraining corpus, a shifted corpus, fine-tuning pairs and eval items.

The skill is two-digit addition. Pretraining shows it in free text, its answer behind one of several
markers and 0–2 filler words, mixed with counting and copying. Fine-tuning and evaluation ask for it
in a question-and-answer form the pretraining text never uses (`\\nq: 37+45?\\na: ` → `82\\n`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MARKERS = ("=", " = ", " is ", " -> ", ": ")
FILLERS = ("so", "then", "ok", "well", "thus", "just", "yes")
SHIFTED_FILLERS = ("hence", "now", "sure", "right")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
ALPHABET = "0123456789" + LETTERS + " \n+=-:>?.,"


@dataclass(frozen=True)
class CorpusMix:
    """Shares of each kind of line in a pretraining corpus, and the filler words it uses."""

    addition: float = 0.6
    counting: float = 0.2
    fillers: tuple[str, ...] = FILLERS


PRETRAIN_MIX = CorpusMix()
# The "new release" keeps learning on text that has drifted: other filler words and more counting.
SHIFTED_MIX = CorpusMix(addition=0.45, counting=0.3, fillers=FILLERS + SHIFTED_FILLERS)


def operand(rng: random.Random) -> int:
    """Half single-digit, half two-digit, so the skill grows smoothly with training."""
    return rng.randrange(10) if rng.random() < 0.5 else rng.randrange(10, 100)


def addition_line(rng: random.Random, fillers: tuple[str, ...]) -> str:
    a, b = operand(rng), operand(rng)
    words = "".join(w + " " for w in rng.sample(fillers, rng.randrange(3)))
    return f"{a}+{b}{rng.choice(MARKERS)}{words}{a + b}"


def counting_line(rng: random.Random) -> str:
    start = rng.randrange(90)
    return " ".join(str(n) for n in range(start, start + rng.randrange(3, 8)))


def copying_line(rng: random.Random) -> str:
    word = "".join(rng.choice(LETTERS + "0123456789") for _ in range(rng.randrange(2, 7)))
    return f"copy {word}: {word}"


def corpus_line(rng: random.Random, mix: CorpusMix) -> str:
    """One line of pretraining text drawn from `mix`."""
    r = rng.random()
    if r < mix.addition:
        return addition_line(rng, mix.fillers)
    if r < mix.addition + mix.counting:
        return counting_line(rng)
    return copying_line(rng)


def corpus_text(rng: random.Random, mix: CorpusMix, *, chars: int) -> str:
    """At least `chars` characters of newline-separated pretraining lines."""
    lines: list[str] = []
    size = 0
    while size < chars:
        line = corpus_line(rng, mix)
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def prompt(a: int, b: int) -> str:
    """The question form of the fine-tuning and eval data."""
    return f"\nq: {a}+{b}?\na: "


def qa_pairs(*, seed: int, train: int, test: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Disjoint train and eval operand pairs, two-digit operands, drawn without replacement."""
    rng = random.Random(seed)
    pool = rng.sample([(a, b) for a in range(10, 100) for b in range(10, 100)], train + test)
    return pool[:train], pool[train:]


def finetune_record(a: int, b: int) -> dict[str, str]:
    """A fine-tuning example: the loss falls on the completion only."""
    return {"prompt": prompt(a, b), "completion": f"{a + b}\n"}


def near_misses(answer: int) -> list[int]:
    """The wrong sums close to `answer`: one digit off (±1, ±10) or a carry slip (+2), never negative."""
    return [d for d in (answer - 10, answer - 1, answer + 1, answer + 10, answer + 2) if d >= 0]


def near_miss(answer: int, rng: random.Random) -> int:
    """One of `near_misses(answer)`, drawn with `rng`."""
    return rng.choice(near_misses(answer))


def preference_record(a: int, b: int, rng: random.Random) -> dict[str, str]:
    """A preference pair for a DPO stage: the correct sum chosen, a near miss rejected."""
    return {"prompt": prompt(a, b), "chosen": f"{a + b}\n", "rejected": f"{near_miss(a + b, rng)}\n"}


def eval_record(a: int, b: int, rng: random.Random) -> dict[str, object]:
    """An eval item with the answer for generation and four choices for the multiple-choice variant."""
    answer = a + b
    distractors = rng.sample(near_misses(answer), 3)
    choices = [str(c) for c in [answer, *distractors]]
    rng.shuffle(choices)
    return {"prompt": prompt(a, b), "answer": str(answer), "choices": choices, "label": choices.index(str(answer))}
