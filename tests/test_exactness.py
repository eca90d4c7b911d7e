"""Guarantees 1 and 2: exact round trips and the float64 reference, bit for bit."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from graftwork.tasks import engine
from graftwork.tasks.io.stfile import TensorReader
from tests.conftest import Family, bits_equal, load_state, read_json, reference, save_model


def test_apply_of_diff_gives_back_the_finetuned_model_bit_for_bit(family: Family, tmp_path: Path) -> None:
    engine.diff(finetuned=family.finetuned, base=family.base, out=tmp_path / "d")
    engine.apply(diff=tmp_path / "d", target=family.base, out=tmp_path / "m")
    got = load_state(tmp_path / "m")
    want = family.states["finetuned"]
    assert got.keys() == want.keys()
    assert all(bits_equal(got[k], want[k]) for k in want)


def test_diff_stores_each_tensor_in_the_narrowest_exact_dtype(family: Family, tmp_path: Path) -> None:
    engine.diff(finetuned=family.finetuned, base=family.base, out=tmp_path / "d")
    manifest = read_json(tmp_path / "d" / "diff.json")
    source = next(iter(family.states["base"].values())).dtype
    expected = "F64" if source == torch.float32 else "F32"
    assert {t["dtype"] for t in manifest["tensors"].values()} == {expected}
    stored = load_state(tmp_path / "d")
    for name, t in manifest["tensors"].items():
        want = (family.states["finetuned"][name].double() - family.states["base"][name].double()).norm().item()
        assert t["l2_norm"] == pytest.approx(want, rel=1e-6)
        assert list(stored[name].shape) == t["shape"]
    assert manifest["tensor_count"] == len(family.states["base"])
    assert manifest["finetuned"]["path"] == str(family.finetuned)
    assert len(manifest["base"]["content_hash"]) == 64


def test_a_tensor_whose_float32_difference_is_inexact_is_stored_in_float64(
    bf16_family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers: set[str] = set()  # the threads that read tensors: one, also while the tensor is read again, wider
    for method in ("read_rows", "read_into", "prefetch"):
        original = getattr(TensorReader, method)

        def spy(self: TensorReader, *args: Any, _original: Any = original) -> Any:
            readers.add(threading.current_thread().name)
            return _original(self, *args)

        monkeypatch.setattr(TensorReader, method, spy)
    base = dict(bf16_family.states["base"])
    ft = dict(bf16_family.states["finetuned"])
    name = "model.layers.0.mlp.up_proj.weight"
    w_base, w_ft = base[name].clone(), ft[name].clone()
    # 1.0 - 2^-30·1.0078125 needs 37 significant bits: float32 rounds it, float64 holds it.
    w_base.view(-1)[123] = 1.0
    w_ft.view(-1)[123] = 2.0**-30 * 1.0078125
    a, b = w_ft.view(-1)[123], w_base.view(-1)[123]
    assert (a.float() - b.float()).double() != a.double() - b.double()
    base[name], ft[name] = w_base, w_ft
    save_model(tmp_path / "b", base)
    save_model(tmp_path / "f", ft)
    summary = engine.diff(finetuned=tmp_path / "f", base=tmp_path / "b", out=tmp_path / "d")
    assert summary.widened == (name,)
    assert len(readers) == 1 and next(iter(readers)).startswith("graft-read")
    dtypes = {n: t["dtype"] for n, t in read_json(tmp_path / "d" / "diff.json")["tensors"].items()}
    assert dtypes[name] == "F64" and set(dtypes.values()) == {"F32", "F64"}
    engine.apply(diff=tmp_path / "d", target=tmp_path / "b", out=tmp_path / "m")
    got = load_state(tmp_path / "m")
    assert all(bits_equal(got[k], ft[k]) for k in ft)


@pytest.mark.parametrize("alpha", [1.0, 0.37, -1.0])
def test_transfer_equals_the_float64_reference(family: Family, tmp_path: Path, alpha: float) -> None:
    engine.transfer(finetuned=family.finetuned, base=family.base, target=family.target, out=tmp_path / "o", alpha=alpha)
    got = load_state(tmp_path / "o")
    s = family.states
    for name, t in s["target"].items():
        want = reference(t, s["finetuned"][name].double() - s["base"][name].double(), alpha)
        assert bits_equal(got[name], want), name


@pytest.mark.parametrize("alpha", [1.0, 0.37])
def test_apply_equals_the_float64_reference(family: Family, tmp_path: Path, alpha: float) -> None:
    engine.diff(finetuned=family.finetuned, base=family.base, out=tmp_path / "d")
    engine.apply(diff=tmp_path / "d", target=family.target, out=tmp_path / "o", alpha=alpha)
    got = load_state(tmp_path / "o")
    stored = load_state(tmp_path / "d")
    for name, t in family.states["target"].items():
        assert bits_equal(got[name], reference(t, stored[name].double(), alpha)), name


def test_float32_with_two_roundings_would_not_pass_the_reference_check() -> None:
    """The comparison above is sharp: the usual float32 arithmetic differs in some elements."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(1 << 16, generator=g) * 0.02
    f = b + torch.randn(1 << 16, generator=g) * 1e-3
    t = b + torch.randn(1 << 16, generator=g) * 1e-2
    fp32_way = t + 0.37 * (f - b)
    exact = (t.double() + 0.37 * (f.double() - b.double())).float()
    assert not bits_equal(fp32_way, exact)
