"""Guarantees 5 and 6: clear errors naming the tensor, nothing left at OUT, pickle refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from graftwork.errors import (
    ArchitectureMismatchError,
    GraftError,
    InexactDeltaError,
    NonFiniteError,
    OutputExistsError,
    PickleWeightsError,
    TensorSetMismatchError,
    UnsupportedDtypeError,
)
from graftwork.tasks import engine
from graftwork.tasks.testbed.synthetic import FamilySpec, build_family
from tests.conftest import Family, bits_equal, load_state, reference, rewrite_tensor, save_model


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _transfer(fam: Family, tmp_path: Path, **models: Path) -> None:
    paths = {"finetuned": fam.finetuned, "base": fam.base, "target": fam.target, **models}
    engine.transfer(**paths, out=tmp_path / "out")


def _nothing_left(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_different_architectures_are_refused(bf16_family: Family, tmp_path: Path) -> None:
    target = _copy(bf16_family.target, tmp_path / "t")
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "mistral"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"target model .* has model_type='mistral' but the fine-tuned model .* has 'llama'",
    ):
        _transfer(bf16_family, tmp_path, target=target)
    assert _nothing_left(tmp_path)


def test_a_missing_tensor_is_named(bf16_family: Family, tmp_path: Path) -> None:
    ft = _copy(bf16_family.finetuned, tmp_path / "f")
    rewrite_tensor(ft, "model.layers.1.self_attn.v_proj.weight", None)
    with pytest.raises(
        TensorSetMismatchError, match=r"fine-tuned model lacks tensor 'model\.layers\.1\.self_attn\.v_proj"
    ):
        _transfer(bf16_family, tmp_path, finetuned=ft)
    assert _nothing_left(tmp_path)


def test_an_extra_tensor_is_named(bf16_family: Family, tmp_path: Path) -> None:
    base = _copy(bf16_family.base, tmp_path / "b")
    rewrite_tensor(base, "model.extra.weight", torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(TensorSetMismatchError, match=r"base model has tensor 'model\.extra\.weight'"):
        _transfer(bf16_family, tmp_path, base=base)
    assert _nothing_left(tmp_path)


def test_a_non_float_tensor_is_named(bf16_family: Family, tmp_path: Path) -> None:
    models = {}
    for role in ("finetuned", "base", "target"):
        models[role] = _copy(getattr(bf16_family, role), tmp_path / role)
        rewrite_tensor(models[role], "model.position_ids", torch.arange(8))
    with pytest.raises(UnsupportedDtypeError, match=r"'model\.position_ids'.*I64"):
        engine.transfer(**models, out=tmp_path / "out")
    assert _nothing_left(tmp_path)


@pytest.mark.parametrize("role", ["finetuned", "base", "target"])
def test_nan_in_an_input_names_the_tensor_and_the_model(bf16_family: Family, tmp_path: Path, role: str) -> None:
    folder = _copy(getattr(bf16_family, role), tmp_path / role)
    name = "model.layers.0.mlp.down_proj.weight"
    w = bf16_family.states[role][name].clone()
    w[3, 5] = float("nan")
    rewrite_tensor(folder, name, w)
    label = {"finetuned": "fine-tuned"}.get(role, role)
    with pytest.raises(NonFiniteError, match=rf"'{name}' of the {label} model .*NaN or Inf"):
        _transfer(bf16_family, tmp_path, **{role: folder})
    assert _nothing_left(tmp_path)


def test_an_overflowing_result_is_refused(bf16_family: Family, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"overflows bfloat16 in the result"):
        engine.transfer(
            finetuned=bf16_family.finetuned,
            base=bf16_family.base,
            target=bf16_family.target,
            out=tmp_path / "out",
            alpha=1e300,
        )
    assert _nothing_left(tmp_path)


def test_an_existing_output_is_kept_unless_overwrite(bf16_family: Family, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _transfer(bf16_family, tmp_path)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    engine.transfer(
        finetuned=bf16_family.finetuned,
        base=bf16_family.base,
        target=bf16_family.target,
        out=tmp_path / "out",
        overwrite=True,
    )
    assert not (tmp_path / "out" / "keep.txt").exists()
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraftError, match=r"has no config\.json"):
        engine.diff(finetuned=tmp_path / "empty", base=tmp_path / "empty", out=tmp_path / "out")
    with pytest.raises(GraftError, match="is not a model folder"):
        engine.diff(finetuned=tmp_path / "nowhere", base=tmp_path / "empty", out=tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_pickle_weights_are_refused_unless_allowed(bf16_family: Family, tmp_path: Path) -> None:
    ft = _copy(bf16_family.finetuned, tmp_path / "ft-pickle")
    for f in [*ft.glob("*.safetensors"), *ft.glob("*.safetensors.index.json")]:
        f.unlink()
    torch.save(bf16_family.states["finetuned"], ft / "pytorch_model.bin")
    with pytest.raises(PickleWeightsError, match=r"pickle weights \(pytorch_model.*--allow-pickle"):
        _transfer(bf16_family, tmp_path, finetuned=ft)
    assert _nothing_left(tmp_path)
    engine.transfer(
        finetuned=ft, base=bf16_family.base, target=bf16_family.target, out=tmp_path / "out", allow_pickle=True
    )
    got = load_state(tmp_path / "out")
    s = bf16_family.states
    for name, t in s["target"].items():
        assert bits_equal(got[name], reference(t, s["finetuned"][name].double() - s["base"][name].double(), 1.0))
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_a_killed_run_leaves_no_output_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    spec = FamilySpec(vocab_size=8000, hidden_size=512, intermediate_size=2048, num_layers=8, num_heads=8)
    fam = build_family(tmp_path / "fam", spec=spec)
    out = tmp_path / "out"
    models = ["--finetuned", str(fam["finetuned"]), "--base", str(fam["base"]), "--target", str(fam["target"])]
    cmd = [sys.executable, "-m", "graftwork.deployments.cli", "transfer", *models, "-o", str(out)]
    cmd += ["--max-shard-size", "4MB"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.partial-*/model-00002-*")) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = list(tmp_path.glob(".out.partial-*"))
    assert partial, "the run should have been killed while writing"
    assert not out.exists()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert (out / "model.safetensors.index.json").is_file()
    assert not any(p.exists() for p in partial)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_the_finiteness_check_has_no_false_alarms_at_the_edge_of_the_range(dtype: torch.dtype) -> None:
    from graftwork.tasks.engine.kernels import count_nonfinite
    from graftwork.tasks.io.torchbits import as_array

    biggest = torch.finfo(dtype).max
    edge = torch.full((1 << 19,), biggest, dtype=dtype)
    assert count_nonfinite(as_array(edge)) == 0  # half a million of the largest finite values: no false alarm
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = edge.clone()
        broken[12345] = bad
        broken[-1] = -bad
        assert count_nonfinite(as_array(broken)) == 2


def test_a_negative_zero_over_a_positive_zero_is_refused_with_its_reason(bf16_family: Family, tmp_path: Path) -> None:
    """-0.0 in the fine-tuned model where its base has +0.0: +0.0 + Δ is +0.0 for every Δ, so no stored dtype gives
    the fine-tuned bits back; the diff names the tensor and says so, and leaves nothing."""
    base, tuned = dict(bf16_family.states["base"]), dict(bf16_family.states["finetuned"])
    name = "model.layers.0.mlp.up_proj.weight"
    base[name], tuned[name] = base[name].clone(), tuned[name].clone()
    base[name].view(-1)[7], tuned[name].view(-1)[7] = 0.0, -0.0
    save_model(tmp_path / "b", base)
    save_model(tmp_path / "f", tuned)
    with pytest.raises(InexactDeltaError, match=rf"tensor '{name}'.*-0\.0 where its base has \+0\.0") as caught:
        engine.diff(finetuned=tmp_path / "f", base=tmp_path / "b", out=tmp_path / "d")
    assert caught.value.tensor == name
    assert not (tmp_path / "d").exists()
