"""Recipes that fit a big model, run on the test bed: bf16 weights, gradient checkpointing and LoRA. Each writes a
full candidate folder in the base's dtype, so Δ and everything after it are the same as for a plain run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graftwork.operations import diffs as ops
from graftwork.storage import Registry
from graftwork.storage.blobs import BlobStore
from graftwork.storage.db import ensure_schema, make_engine, session_scope
from graftwork.tasks import engine
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.finetune import FinetuneResult, finetune
from graftwork.tasks.training.recipe import Lora, Recipe
from tests.conftest import bits_equal, load_state
from tests.registry.conftest import track_named


@pytest.fixture(scope="module")
def bf16_base(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test bed's M4, its weights cast to bf16 (as Llama and OLMo are published)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("bf16") / "M4"
    AutoModelForCausalLM.from_pretrained(str(testbed.releases[-1]), dtype=torch.bfloat16).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(testbed.releases[-1])).save_pretrained(str(out))
    return out


def _tune(base: Path, data: Path, out: Path, **recipe: object) -> FinetuneResult:
    return finetune(model_dir=base, data=data, recipe=Recipe.model_validate({"steps": 20, **recipe}), out_dir=out)


def _dtypes(folder: Path) -> set[torch.dtype]:
    return {t.dtype for t in load_state(folder).values()}


def test_bf16_with_checkpointing_writes_a_bf16_candidate_whose_delta_stores_small(
    bf16_base: Path, testbed: Testbed, tmp_path: Path
) -> None:
    """A bf16 full fine-tune of a bf16 base (bf16 compute over fp32 master weights) writes its candidate in
    bf16; its Δ, stored in the registry, takes at most 0.6× the model's bf16 bytes."""
    result = _tune(bf16_base, testbed.train_data, tmp_path / "ft", precision="bf16", gradient_checkpointing=True)
    losses = [loss for _, loss in result.loss_curve]
    assert losses[-1] < 0.5 * losses[0]
    assert _dtypes(result.out_dir) == {torch.bfloat16}
    assert json.loads((result.out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    engine.diff(finetuned=result.out_dir, base=bf16_base, out=tmp_path / "delta")
    store = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    ensure_schema(store)
    with session_scope(store) as session:
        track_named(session, "t")
    stored = ops.register_diff(
        Registry(engine=store, store=BlobStore(str(tmp_path / "blobs"))), diff_dir=tmp_path / "delta", track="t"
    ).stored_bytes
    model_bytes = sum(t.numel() * 2 for t in load_state(bf16_base).values())
    assert stored <= 0.6 * model_bytes, f"Δ stores {stored / model_bytes:.3f}× the model's bf16 bytes"
    store.dispose()


def test_checkpointing_changes_memory_not_the_weights(testbed: Testbed, tmp_path: Path) -> None:
    plain = _tune(testbed.releases[0], testbed.train_data, tmp_path / "plain", steps=5)
    checkpointed = _tune(testbed.releases[0], testbed.train_data, tmp_path / "gc", steps=5, gradient_checkpointing=True)
    a, b = load_state(plain.out_dir), load_state(checkpointed.out_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert [loss for _, loss in plain.loss_curve] == pytest.approx(
        [loss for _, loss in checkpointed.loss_curve], abs=1e-6
    )


def test_lora_candidate_is_the_full_model_in_the_base_dtype_changed_where_adapted(
    bf16_base: Path, testbed: Testbed, tmp_path: Path
) -> None:
    """Only the adapted projections move, by a rank-r update merged into the bf16 weights; the folder holds
    the same files as a full fine-tune's (no adapter files) and the loss falls."""
    lora = Lora(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj"))
    result = _tune(bf16_base, testbed.train_data, tmp_path / "lora", precision="bf16", gradient_checkpointing=True,
                   peft=lora.model_dump(), learning_rate=1e-2)  # fmt: skip
    losses = [loss for _, loss in result.loss_curve]
    assert losses[-1] < 0.7 * losses[0]
    assert sorted(p.name for p in result.out_dir.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    base, tuned = load_state(bf16_base), load_state(result.out_dir)
    assert _dtypes(result.out_dir) == {torch.bfloat16} and tuned.keys() == base.keys()
    moved = sorted(k for k in base if not bits_equal(base[k], tuned[k]))
    assert moved == [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in ("q", "v")]
    for name in moved:
        update = tuned[name].float() - base[name].float()
        singular = torch.linalg.svdvals(update)
        assert singular[lora.r :].max() < 0.05 * singular[0], name  # rank r, up to bf16 rounding


def test_a_full_fine_tune_keeps_fp32_masters_and_only_a_lora_base_loads_in_bf16() -> None:
    """In a bf16 AdamW an update under half a bf16 step of its weight is lost: at lr 5e-6 on weights of std
    0.02 that is most of them. So only a LoRA recipe's frozen base is loaded in bf16."""
    from graftwork.tasks.training.candidate import load_dtype

    assert load_dtype(recipe=Recipe(precision="bf16")) == torch.float32
    assert load_dtype(recipe=Recipe(precision="bf16", peft=Lora())) == torch.bfloat16
    assert load_dtype(recipe=Recipe(precision="fp32", peft=Lora())) == torch.float32
    weights = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.02
    step = torch.full_like(weights, 5e-6)  # one AdamW step at lr 5e-6 moves each weight by about lr
    lost = (weights.bfloat16() + step.bfloat16() == weights.bfloat16()).float().mean().item()
    assert lost > 0.5, lost  # why: most of a bf16 master's updates would vanish


def test_a_fine_tune_that_saved_no_weights_is_not_a_candidate(tmp_path: Path, bf16_base: Path) -> None:
    """A ZeRO-3 config without zero3_save_16bit_model leaves the trainer's folder without safetensors: that is an
    error naming the fix, not an empty candidate."""
    from graftwork.errors import ModelFolderError
    from graftwork.tasks.training.candidate import write_candidate

    staged, out = tmp_path / "staged", tmp_path / "out"
    staged.mkdir()
    out.mkdir()
    (staged / "config.json").write_text((bf16_base / "config.json").read_text())
    with pytest.raises(ModelFolderError, match=r"saved no safetensors weights .* zero3_save_16bit_model: true"):
        write_candidate(staged=staged, start=bf16_base, dtype=torch.bfloat16, out=out)
    assert list(out.iterdir()) == []
