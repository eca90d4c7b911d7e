"""Guarantee 4: vocabulary rows are carried, aligned by token string, or kept; never truncated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from graftwork.errors import ShapeMismatchError
from graftwork.tasks import engine
from graftwork.tasks.io.tokenizers import Tokenizer, _fast_vocab
from graftwork.tasks.testbed import Testbed
from tests.conftest import (
    VOCAB,
    bits_equal,
    load_state,
    perturb,
    random_state,
    read_json,
    reference,
    rewrite_tensor,
    save_model,
    save_tokenizer,
)

ADDED = ["<|user|>", "<|assistant|>", "<|end|>"]
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def _with_rows(state: dict[str, torch.Tensor], rows: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name in VOCAB_TENSORS:
        extra = (torch.randn(rows, state[name].shape[1], generator=g) * 0.02).to(state[name].dtype)
        out[name] = torch.cat([state[name], extra])
    return out


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    base = random_state(seed=11, vocab_size=len(VOCAB), dtype=torch.bfloat16)
    return {
        "base": base,
        "finetuned": perturb(base, seed=12, std=2e-3),
        "finetuned_added": _with_rows(perturb(base, seed=12, std=2e-3), len(ADDED), seed=13),
        "target": perturb(base, seed=14, std=2e-2),
    }


def _delta(states: dict[str, dict[str, torch.Tensor]], ft: str, name: str) -> torch.Tensor:
    rows = states["base"][name].shape[0]
    return states[ft][name][:rows].double() - states["base"][name].double()


def test_rows_added_in_finetuning_are_carried_with_the_finetuned_tokenizer(states, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base = save_model(tmp_path / "b", states["base"])
    ft = save_model(tmp_path / "f", states["finetuned_added"], vocab=VOCAB + ADDED)
    target = save_model(tmp_path / "t", states["target"])
    summary = engine.transfer(finetuned=ft, base=base, target=target, out=tmp_path / "o")
    assert summary.rows == {"transferred": len(VOCAB), "kept": 0, "carried": len(ADDED)}
    got = load_state(tmp_path / "o")
    for name in VOCAB_TENSORS:
        assert got[name].shape[0] == len(VOCAB) + len(ADDED)
        assert bits_equal(
            got[name][: len(VOCAB)], reference(states["target"][name], _delta(states, "finetuned_added", name), 1.0)
        )
        assert bits_equal(got[name][len(VOCAB) :], states["finetuned_added"][name][len(VOCAB) :])
    assert read_json(tmp_path / "o" / "config.json")["vocab_size"] == len(VOCAB) + len(ADDED)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "o"))
    assert [tok.convert_tokens_to_ids(t) for t in ADDED] == list(range(len(VOCAB), len(VOCAB) + len(ADDED)))

    from transformers import AutoModelForCausalLM

    assert (
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "o")).get_input_embeddings().num_embeddings
        == len(VOCAB) + 3
    )


def test_diff_and_apply_round_trip_carried_rows(states, tmp_path: Path) -> None:
    base = save_model(tmp_path / "b", states["base"])
    ft = save_model(tmp_path / "f", states["finetuned_added"], vocab=VOCAB + ADDED)
    summary = engine.diff(finetuned=ft, base=base, out=tmp_path / "d")
    assert summary.rows == {"carried": len(ADDED)}
    assert read_json(tmp_path / "d" / "diff.json")["vocab"] == {
        "base_rows": len(VOCAB),
        "finetuned_rows": len(VOCAB) + 3,
    }
    assert (tmp_path / "d" / "finetuned_tokenizer" / "tokenizer.json").is_file()  # the layout diff.json names
    assert read_json(tmp_path / "d" / "diff.json")["tokenizers"] == {
        "base": "base_tokenizer",
        "finetuned": "finetuned_tokenizer",
    }
    applied = engine.apply(diff=tmp_path / "d", target=base, out=tmp_path / "m")
    assert applied.rows == {"transferred": len(VOCAB), "kept": 0, "carried": len(ADDED)}
    got = load_state(tmp_path / "m")
    assert all(bits_equal(got[k], v) for k, v in states["finetuned_added"].items())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))  # the carried rows come with their tokens
    assert [tok.convert_tokens_to_ids(t) for t in ADDED] == list(range(len(VOCAB), len(VOCAB) + len(ADDED)))


def _reordered_target(states, tmp_path: Path) -> tuple[Path, list[str], dict[str, torch.Tensor]]:
    """A target whose tokenizer orders tokens differently, lacks '!' and '?', and has 'é' and 'ß'."""
    target_vocab = VOCAB[:3] + list(reversed([t for t in VOCAB[3:] if t not in "!?"])) + ["é", "ß"]
    state = random_state(seed=21, vocab_size=len(target_vocab), dtype=torch.bfloat16)
    return save_model(tmp_path / "t2", state, vocab=target_vocab), target_vocab, state


def test_rows_are_matched_by_token_when_the_target_vocabulary_differs(states, tmp_path: Path) -> None:
    base = save_model(tmp_path / "b", states["base"])
    ft = save_model(tmp_path / "f", states["finetuned"])
    target, target_vocab, tstate = _reordered_target(states, tmp_path)
    summary = engine.transfer(finetuned=ft, base=base, target=target, out=tmp_path / "o")
    assert summary.rows == {"transferred": len(target_vocab) - 2, "kept": 2, "carried": 0}
    got = load_state(tmp_path / "o")
    for name in VOCAB_TENSORS:
        delta = _delta(states, "finetuned", name)
        assert got[name].shape == tstate[name].shape
        for r, tok in enumerate(target_vocab):
            if tok in VOCAB:
                want = reference(tstate[name][r], delta[VOCAB.index(tok)], 1.0)
            else:
                want = tstate[name][r]
            assert bits_equal(got[name][r], want), (name, tok)


def test_added_tokens_are_appended_to_a_target_with_another_vocabulary(states, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base = save_model(tmp_path / "b", states["base"])
    ft = save_model(tmp_path / "f", states["finetuned_added"], vocab=VOCAB + ADDED)
    target, target_vocab, _ = _reordered_target(states, tmp_path)
    summary = engine.transfer(finetuned=ft, base=base, target=target, out=tmp_path / "o")
    assert summary.rows == {"transferred": len(target_vocab) - 2, "kept": 2, "carried": 3}
    got = load_state(tmp_path / "o")
    n = len(target_vocab)
    for name in VOCAB_TENSORS:
        assert bits_equal(got[name][n:], states["finetuned_added"][name][len(VOCAB) :])
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "o"))
    assert [tok.convert_tokens_to_ids(t) for t in ADDED] == [n, n + 1, n + 2]
    assert tok.convert_tokens_to_ids("é") == target_vocab.index("é")


def test_any_other_shape_mismatch_names_the_tensor_and_both_shapes(states, tmp_path: Path) -> None:
    base = save_model(tmp_path / "b", states["base"])
    ft = save_model(tmp_path / "f", states["finetuned"])
    target = save_model(tmp_path / "t", states["target"])
    rewrite_tensor(target, "model.layers.1.mlp.up_proj.weight", torch.zeros(48, 32, dtype=torch.bfloat16))
    with pytest.raises(ShapeMismatchError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\[48, 32\].*\[64, 32\]"):
        engine.transfer(finetuned=ft, base=base, target=target, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def _transformers_vocab(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(str(folder)).get_vocab())


def test_the_vocabulary_is_read_without_transformers_exactly_as_transformers_reads_it(
    testbed: Testbed, tmp_path: Path
) -> None:
    """Where `tokenizer.json` holds every token its config names, the engine reads it with the tokenizers
    library (so its commands need no transformers, and no torch), and gets transformers' vocabulary."""
    from transformers import PreTrainedTokenizerFast

    save_tokenizer(tmp_path / "plain", VOCAB)
    added = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "plain"))
    added.add_tokens(ADDED)
    added.add_special_tokens({"pad_token": "<pad>"})
    added.save_pretrained(str(tmp_path / "added"))
    for folder in (testbed.releases[0], tmp_path / "plain", tmp_path / "added"):
        fast = _fast_vocab(folder)
        assert fast is not None and fast == _transformers_vocab(folder), folder
    missing = tmp_path / "missing"
    shutil.copytree(tmp_path / "plain", missing)
    config = json.loads((missing / "tokenizer_config.json").read_text())
    (missing / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<pad>"}))
    assert _fast_vocab(missing) is None  # transformers adds <pad>: its reading is the one to use
    assert "<pad>" in Tokenizer(folder=missing, digest=None).vocab(role="target")
