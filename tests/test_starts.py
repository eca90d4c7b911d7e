"""recycle.mode: auto's library: the transferability pre-check, the probes that score candidate starts, and the
choice (tasks/starts)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from graftwork.errors import FinetuneConfigError, FinetuneDataError, GraftError, SuiteError
from graftwork.tasks import engine
from graftwork.tasks.io.stfile import TensorReader
from graftwork.tasks.starts.choice import PLAIN, Precheck
from graftwork.tasks.starts.make import make_starts
from graftwork.tasks.starts.precheck import group_of, precheck
from graftwork.tasks.starts.probes import choose, choose_over_plain, heldout_loss, score_starts
from graftwork.tasks.starts.spec import Probe
from graftwork.tasks.starts.split import PROBE_DATA, heldout_split, read_jsonl, write_probe_task
from graftwork.tasks.suite import Suite
from graftwork.tasks.testbed import Testbed, corpus
from graftwork.tasks.testbed.shipped import shipped_root
from graftwork.tasks.training.finetune import finetune
from graftwork.tasks.training.recipe import Recipe

CONTROL = shipped_root() / "seed0" / "control"  # pretrained from another initialisation (read only here)


@pytest.fixture(scope="module")
def delta_m4(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Δ of a 5-step fine-tune of M4: a real diff, made in about a second."""
    work = tmp_path_factory.mktemp("starts")
    ft = finetune(
        model_dir=testbed.releases[-1],
        data=testbed.train_data,
        recipe=Recipe(steps=5, warmup_steps=1),
        out_dir=work / "ft",
        threads=1,
    )
    return engine.diff(finetuned=ft.out_dir, base=testbed.releases[-1], out=work / "delta").output


class _Counting(TensorReader):
    def __init__(self) -> None:
        super().__init__()
        self.reads, self.closed = 0, False

    def read_rows(self, info, start, stop):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().read_rows(info, start, stop)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_the_precheck_separates_a_successive_release_from_another_lineage(testbed: Testbed, delta_m4: Path) -> None:
    reader = _Counting()
    successor = precheck(previous_base=testbed.releases[-1], base=testbed.new_release, diff=delta_m4, reader=reader)
    control = precheck(previous_base=testbed.releases[-1], base=CONTROL, diff=delta_m4)
    assert (successor.lineage_broken, control.lineage_broken) == (False, True)
    # Measured on the shipped bed: M4 → M5 moves 0.132 of M4's norm, the control sits 1.144 away (weight
    # matrices at ~√2, as two independent initialisations); the threshold, 0.8, lies between.
    assert 0.10 < successor.overall.base_shift < 0.17
    assert 1.05 < control.overall.base_shift < 1.25
    assert all(1.3 < control.groups[g].base_shift < 1.6 for g in ("attention.q", "mlp", "embeddings", "lm_head"))
    assert successor.overall.tensors == 21 and reader.reads == 3 * 21 and reader.closed  # one chunk each
    assert set(successor.groups) == {f"attention.{x}" for x in "qkvo"} | {"mlp", "embeddings", "lm_head", "norms"}
    assert "fine-tune the plain release" in control.reason and "may carry over" in successor.reason
    assert Precheck.model_validate_json(successor.model_dump_json()) == successor  # a registry JSON column
    with pytest.raises(ValidationError):
        successor.lineage_broken = True  # type: ignore[misc]


def test_layer_types_are_named_by_parameter_pattern() -> None:
    names = {
        "model.layers.0.self_attn.q_proj.weight": "attention.q",
        "model.layers.1.self_attn.o_proj.weight": "attention.o",
        "model.layers.0.mlp.down_proj.weight": "mlp",
        "model.embed_tokens.weight": "embeddings",
        "lm_head.weight": "lm_head",
        "model.layers.0.input_layernorm.weight": "norms",
        "model.norm.weight": "norms",
        "model.rotary.inv_freq": "other",
    }
    assert {n: group_of(n) for n in names} == names


def test_the_heldout_loss_is_deterministic_and_equal_starts_score_equally(testbed: Testbed, tmp_path: Path) -> None:
    train, heldout = heldout_split(data=testbed.train_data, examples=25, out=tmp_path / "split")
    assert (len(read_jsonl(train)), len(read_jsonl(heldout))) == (975, 25)
    assert not {r["prompt"] for r in read_jsonl(train)} & {r["prompt"] for r in read_jsonl(heldout)}
    recipe = Recipe()
    first = heldout_loss(model_dir=testbed.releases[-1], data=heldout, recipe=recipe)
    assert first == heldout_loss(model_dir=testbed.releases[-1], data=heldout, recipe=recipe)
    assert 1.0 < first < 20.0
    twin = shutil.copytree(testbed.releases[-1], tmp_path / "twin")
    result = score_starts(
        starts={PLAIN: testbed.releases[-1], "twin": twin, "M3": testbed.releases[-2]},
        probe=Probe(kind="heldout_loss", examples=25),
        recipe=recipe,
        data=testbed.train_data,
        work=tmp_path / "work",
    )
    assert result.scores[PLAIN].score == result.scores["twin"].score == pytest.approx(-first)
    assert result.chosen == choose({n: s.score for n, s in result.scores.items()})
    assert (result.probe_steps, result.evaluations, result.full_steps) == (0, 3, recipe.steps)


def test_choosing_picks_the_argmax_and_the_first_on_a_tie() -> None:
    assert choose({"plain": 0.1, "dir@0.5": 0.7, "dir@1": 0.4}) == "dir@0.5"
    assert choose({"plain": 0.5, "dir@1": 0.5}) == "plain"
    assert choose({"plain": -2.0, "iter@1": -1.5}) == "iter@1"
    with pytest.raises(FinetuneConfigError, match="no starts to choose from; pass at least the plain release"):
        choose({})


def _scores(right: set[int], n: int = 100) -> dict[tuple[str, str, int], float]:
    return {("probe", "none", d): float(d in right) for d in range(n)}


def test_a_recycled_start_must_beat_plain_surely_on_the_probe_documents() -> None:
    plain = _scores(set(range(40)))
    # 10 more right answers and none lost: one-sided McNemar p = 2^-10, far below 5 %.
    chosen, check = choose_over_plain(samples={PLAIN: plain, "dir@1": _scores(set(range(50)))}, confidence=0.95)
    assert chosen == "dir@1" and check is not None and check.kept
    assert (check.start, check.n, check.diff, check.p_value) == ("dir@1", 100, pytest.approx(0.10), 2**-10)
    assert check.lower_bound > 0 and (check.confidence, check.resamples) == (0.95, 2000)
    # A weak base: 4 right answers against none. The bootstrap's 5 % bound is above 0 (a resample misses all 4
    # with probability 0.96^100 < 2 %), but McNemar's p = 1/16: not sure, so plain.
    weak = {PLAIN: _scores(set()), "dir@0.5": _scores({1}), "dir@1": _scores({3, 7, 9, 11})}
    chosen, check = choose_over_plain(samples=weak, confidence=0.95)
    assert chosen == PLAIN and check is not None and not check.kept
    assert (check.start, check.diff, check.p_value) == ("dir@1", pytest.approx(0.04), 0.0625)
    assert check.lower_bound > 0
    # Wins and losses that nearly cancel: 12 against 8.
    mixed = _scores(set(range(8, 52)))
    chosen, check = choose_over_plain(samples={PLAIN: plain, "iter@1": mixed}, confidence=0.95)
    assert chosen == PLAIN and check is not None and not check.kept
    assert (check.diff, check.p_value) == (pytest.approx(0.04), pytest.approx(0.2517, abs=1e-4))
    # Plain scoring best (or tied) needs no check.
    assert choose_over_plain(samples={PLAIN: plain, "dir@1": dict(plain)}, confidence=0.95) == (PLAIN, None)
    # Scores that are not 0/1 rely on the bootstrap alone.
    graded = {PLAIN: {k: 0.5 for k in plain}, "dir@1": {k: 0.5 + 0.01 * (k[2] % 3) for k in plain}}
    chosen, check = choose_over_plain(samples=graded, confidence=0.95)
    assert chosen == "dir@1" and check is not None and check.p_value is None and check.kept


def test_choosing_over_plain_needs_plain_and_the_same_documents() -> None:
    with pytest.raises(FinetuneConfigError, match=r"needs its scores; the starts are \['dir@1'\]"):
        choose_over_plain(samples={"dir@1": _scores(set())}, confidence=0.95)
    with pytest.raises(ValueError, match="not scored on the same samples"):
        choose_over_plain(samples={PLAIN: _scores(set()), "dir@1": _scores({1}, n=50)}, confidence=0.95)


def test_the_probe_config_has_measured_defaults_and_rejects_bad_values() -> None:
    probe = Probe()
    assert (probe.kind, probe.alphas, probe.examples, probe.confidence) == ("zero_shot", (0.5, 0.75, 1.0), 100, 0.95)
    assert Probe.model_validate({"confidence": None}).confidence is None
    assert Probe.model_validate({"kind": "short_finetune", "alphas": [0.5, 1]}).alphas == (0.5, 1.0)
    cases = {
        "alphas [0.0] are out of range: each α must be in (0, 2]": {"alphas": [0.0]},
        "alphas [0.5, 0.5] repeat a value; list each α once": {"alphas": [0.5, 0.5]},
        "at least 1 item": {"alphas": []},
        "'zero_shot', 'heldout_loss' or 'short_finetune'": {"kind": "oracle"},
        "greater than 0": {"steps_fraction": 0},
        "less than 1": {"confidence": 1.0},
        "greater than or equal to 1": {"examples": 0},
        "Extra inputs are not permitted": {"steps": 10},
    }
    for message, data in cases.items():
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(")):
            Probe.model_validate(data)


def test_probe_arguments_that_cannot_work_are_clear_errors(testbed: Testbed, tmp_path: Path) -> None:
    with pytest.raises(FinetuneDataError, match=r"cannot hold out 1000 of the 1000 examples in .*between 1 and 999"):
        heldout_split(data=testbed.train_data, examples=1000, out=tmp_path)
    with pytest.raises(FinetuneConfigError, match=r"the zero_shot probe needs a probe suite .*pass suite=") as info:
        score_starts(starts={PLAIN: testbed.releases[-1]}, probe=Probe(kind="zero_shot"), recipe=Recipe(),
                     data=testbed.train_data, work=tmp_path)  # fmt: skip
    assert isinstance(info.value, GraftError) and isinstance(info.value, ValueError) and info.value.field == "suite"
    with pytest.raises(FinetuneConfigError, match="no starts to score"):
        score_starts(starts={}, probe=Probe(), recipe=Recipe(), data=testbed.train_data, work=tmp_path)
    with pytest.raises(FinetuneConfigError, match="starts need at least one α"):
        make_starts(base=testbed.releases[-1], diffs={}, alphas=(), out=tmp_path)


def _probe_task(testbed: Testbed, testbed_suite: Suite, out: Path, examples: int) -> Suite:
    evals = read_jsonl(testbed.task_dir.parent / "data" / "eval.jsonl")
    # The pool starts with every eval document: each must be left out.
    rng = random.Random(0)
    pool = [*evals, *(corpus.eval_record(a, b, rng) for a in range(10, 30) for b in (11, 12))]
    return write_probe_task(
        suite=testbed_suite, task=testbed.generate_task, docs=pool, exclude=evals, examples=examples, out=out
    )


def test_the_probe_task_leaves_out_every_eval_document(testbed: Testbed, testbed_suite: Suite, tmp_path: Path) -> None:
    suite = _probe_task(testbed, testbed_suite, tmp_path / "probe", examples=30)
    docs = read_jsonl(tmp_path / "probe" / PROBE_DATA)
    evals = {d["prompt"] for d in read_jsonl(testbed.task_dir.parent / "data" / "eval.jsonl")}
    assert len(docs) == 30 and not {d["prompt"] for d in docs} & evals
    assert suite.tasks == ("testbed_add_probe",) and suite.task_dirs == (tmp_path / "probe",)
    text = (tmp_path / "probe" / "testbed_add_probe.yaml").read_text()
    assert "exact_match" in text and "custom_dataset: !function probe_data.probe_split" in text
    with pytest.raises(SuiteError, match=r"only 39 probe documents .* not 40"):  # one of the 40 sums is an eval sum
        _probe_task(testbed, testbed_suite, tmp_path / "again", examples=40)


@pytest.mark.slow
def test_zero_shot_and_short_finetune_probes_score_and_halve(
    testbed: Testbed, testbed_suite: Suite, tmp_path: Path, delta_m4: Path
) -> None:
    suite = _probe_task(testbed, testbed_suite, tmp_path / "probe", examples=20)
    starts = make_starts(base=testbed.new_release, diffs={"dir": delta_m4}, alphas=(0.5, 1.0), out=tmp_path / "s")
    assert list(starts) == [PLAIN, "dir@0.5", "dir@1"]
    recipe = Recipe(steps=20, warmup_steps=2)
    zero = score_starts(starts=starts, probe=Probe(kind="zero_shot"), recipe=recipe, data=testbed.train_data,
                        work=tmp_path / "z", suite=suite)  # fmt: skip
    assert all(0 <= s.score <= 1 for s in zero.scores.values()) and zero.probe_steps == 0
    assert zero.versus_plain is None or zero.versus_plain.n == 20
    assert zero.chosen == (zero.versus_plain.start if zero.versus_plain and zero.versus_plain.kept else PLAIN) or (
        zero.versus_plain is None and zero.chosen == PLAIN
    )
    short = score_starts(
        starts=starts,
        probe=Probe(kind="short_finetune", steps_fraction=0.25, examples=50),
        recipe=recipe,
        data=testbed.train_data,
        work=tmp_path / "w",
        threads=1,
    )
    # 3 starts × 5 steps, then the better 2 × 5 more: 25 probe steps, one of them left.
    assert (short.probe_steps, short.evaluations) == (25, 5)
    assert sorted(s.rounds for s in short.scores.values()) == [1, 2, 2]
    assert short.scores[short.chosen].rounds == 2 and short.scores[short.chosen].curve[-1][0] == 10
    assert json.loads(short.model_dump_json())["chosen"] == short.chosen
