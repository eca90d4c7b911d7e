"""Guarantees 3 and 7: tied embeddings, differing shard boundaries, loadable output with provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graftwork.tasks import engine
from tests.conftest import Family, bits_equal, load_state, make_family, read_json, reference


def test_output_loads_with_transformers_and_carries_the_targets_files(bf16_family: Family, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "o"
    engine.transfer(finetuned=bf16_family.finetuned, base=bf16_family.base, target=bf16_family.target, out=out)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    s = bf16_family.states
    for name, param in model.state_dict().items():
        want = reference(s["target"][name], s["finetuned"][name].double() - s["base"][name].double(), 1.0)
        assert bits_equal(param, want), name
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (bf16_family.target / f).read_bytes() or f == "config.json"
    assert read_json(out / "config.json") == read_json(bf16_family.target / "config.json")
    assert (
        AutoTokenizer.from_pretrained(str(out)).get_vocab()
        == AutoTokenizer.from_pretrained(str(bf16_family.target)).get_vocab()
    )
    index = read_json(out / "model.safetensors.index.json")
    assert set(index["weight_map"]) == set(s["target"])


def test_provenance_is_recorded_in_the_safetensors_metadata(bf16_family: Family, tmp_path: Path) -> None:
    out = tmp_path / "o"
    engine.transfer(
        finetuned=bf16_family.finetuned, base=bf16_family.base, target=bf16_family.target, out=out, alpha=0.5
    )
    shard = next(out.glob("model-*.safetensors"))
    with safe_open(str(shard), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert meta["graftwork_operation"] == "transfer"
    assert meta["graftwork_alpha"] == "0.5"
    assert json.loads(meta["graftwork_target"])["path"] == str(bf16_family.target)
    assert json.loads(meta["graftwork_finetuned"])["path"] == str(bf16_family.finetuned)
    assert json.loads(meta["graftwork_base"])["path"] == str(bf16_family.base)


def test_output_is_sharded_at_the_requested_size(bf16_family: Family, tmp_path: Path) -> None:
    out = tmp_path / "o"
    summary = engine.transfer(
        finetuned=bf16_family.finetuned,
        base=bf16_family.base,
        target=bf16_family.target,
        out=out,
        max_shard_bytes=20_000,
    )
    shards = sorted(out.glob("model-*.safetensors"))
    assert summary.shards == len(shards) >= 2
    for p in shards:
        with safe_open(str(p), framework="pt") as f:
            sizes = [f.get_tensor(k).nbytes for k in f.keys()]
        assert sum(sizes) <= 20_000 or len(sizes) == 1
    assert all(p.name.endswith(f"-of-{len(shards):05d}.safetensors") for p in shards)
    got = load_state(out)
    assert got.keys() == bf16_family.states["target"].keys()


def test_tied_embeddings_are_changed_once(tmp_path: Path) -> None:
    fam = make_family(tmp_path / "fam", dtype=torch.bfloat16, tie=True)
    # A checkpoint that stores the tied matrix under both names, as some converted checkpoints do.
    for role in ("finetuned", "target"):
        folder = getattr(fam, role)
        shard = sorted(folder.glob("*.safetensors"))[0]
        tensors = load_state(folder)
        assert "lm_head.weight" not in tensors
        with safe_open(str(shard), framework="pt") as f:
            part = {k: f.get_tensor(k) for k in f.keys()}
        part["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(part, str(shard), metadata={"format": "pt"})
        index = folder / "model.safetensors.index.json"
        if index.exists():
            data = json.loads(index.read_text())
            data["weight_map"]["lm_head.weight"] = shard.name
            index.write_text(json.dumps(data))
    out = tmp_path / "o"
    engine.transfer(finetuned=fam.finetuned, base=fam.base, target=fam.target, out=out)
    got = load_state(out)
    s = fam.states
    name = "model.embed_tokens.weight"
    once = reference(s["target"][name], s["finetuned"][name].double() - s["base"][name].double(), 1.0)
    assert bits_equal(got[name], once)
    assert "lm_head.weight" not in got

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert bits_equal(model.get_output_embeddings().weight.detach(), once)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("durable", [True, False], ids=["fsync", "no-fsync"])
def test_fsync_covers_every_output_file_only_when_asked(
    bf16_family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    synced: set[str] = set()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    out = tmp_path / "o"
    engine.transfer(
        finetuned=bf16_family.finetuned, base=bf16_family.base, target=bf16_family.target, out=out, durable=durable
    )
    files = {p.name for p in out.iterdir()}
    assert {"model-00001-of-00001.safetensors", "config.json", "tokenizer.json"} <= files
    # Files are synced inside the partial folder, before the rename; the folder's parent after it.
    synced_names = {Path(p).name for p in synced}
    if durable:
        assert files <= synced_names
        assert str(tmp_path) in synced
    else:
        assert synced == set()
