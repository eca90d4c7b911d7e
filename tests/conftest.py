"""Shared fixtures: tiny Llama models built with transformers, with char-level tokenizers."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import fcntl  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.databases import database_url, postgresql_server, pytest_terminal_summary  # noqa: E402, F401
from tests.rounding import BF16, FP16, FP32, round_once  # noqa: E402

if TYPE_CHECKING:
    from graftwork.tasks.suite import Suite
    from graftwork.tasks.testbed import Testbed
    from graftwork.tasks.training.finetune import FinetuneResult

VOCAB = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789 .,!?")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for every test of the session that talks to Prefect; PREFECT_API_URL
    names it in this process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _prefect_port_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's data-dir Prefect servers listen on a free port: the default, 4200, is a user's, and the tests
    run side by side."""
    from tests.service import free_port

    monkeypatch.setenv("GRAFT_PREFECT_PORT", str(free_port()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def save_tokenizer(path: Path, vocab: list[str]) -> None:
    """A word-level tokenizer over `vocab`, saved as a normal fast tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(path))


def llama_config(vocab_size: int, *, tie: bool = False) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )


def random_state(*, seed: int, vocab_size: int, dtype: torch.dtype, tie: bool = False) -> dict[str, torch.Tensor]:
    """A tiny Llama's weights, initialised by transformers from a seed."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(vocab_size, tie=tie))
    return {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}


def perturb(state: dict[str, torch.Tensor], *, seed: int, std: float) -> dict[str, torch.Tensor]:
    """state + N(0, std), rounded to each tensor's dtype."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v.double() + std * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(v.dtype)
        for k, v in state.items()
    }


def save_model(
    path: Path,
    state: dict[str, torch.Tensor],
    *,
    vocab: list[str] | None = VOCAB,
    tie: bool = False,
    shard_size: str = "40KB",
) -> Path:
    """Save `state` as a Hugging Face folder through `save_pretrained`."""
    from transformers import GenerationConfig, LlamaForCausalLM

    vocab_size = state["model.embed_tokens.weight"].shape[0]
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(vocab_size, tie=tie))
    model.load_state_dict(state, assign=True, strict=False)
    if tie:
        model.tie_weights()
    model.save_pretrained(str(path), max_shard_size=shard_size)
    GenerationConfig(max_new_tokens=7, eos_token_id=2).save_pretrained(str(path))
    if vocab is not None:
        save_tokenizer(path, vocab)
    return path


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files, read by the safetensors library."""
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


ROUNDING = {torch.bfloat16: BF16, torch.float16: FP16, torch.float32: FP32}


def reference(target: torch.Tensor, delta64: torch.Tensor, alpha: float) -> torch.Tensor:
    """target + alpha·Δ in float64, rounded once to the target's dtype (`tests/rounding.py`: torch's own float64 →
    bf16/fp16 conversion rounds twice). The rounded values are the dtype's, so converting them is exact."""
    exact = (target.double() + alpha * delta64).numpy()
    return torch.from_numpy(round_once(ROUNDING[target.dtype], exact)).to(target.dtype)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (distinguishes -0.0 from 0.0 and compares NaN payloads)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(ints[a.element_size()]), b.view(ints[b.element_size()]))
    )


@dataclass(frozen=True)
class Family:
    """A source base, its fine-tuned model and a target (a drifted later release), on disk and in memory."""

    base: Path
    finetuned: Path
    target: Path
    states: dict[str, dict[str, torch.Tensor]]


def make_family(root: Path, *, dtype: torch.dtype, tie: bool = False, seed: int = 0) -> Family:
    base = random_state(seed=seed, vocab_size=len(VOCAB), dtype=dtype, tie=tie)
    if tie:
        base.pop("lm_head.weight", None)
    states = {
        "base": base,
        "finetuned": perturb(base, seed=seed + 1, std=2e-3),
        "target": perturb(base, seed=seed + 2, std=2e-2),
    }
    shard_sizes = {"base": "40KB", "finetuned": "25KB", "target": "1GB"}
    paths = {role: save_model(root / role, st, tie=tie, shard_size=shard_sizes[role]) for role, st in states.items()}
    return Family(base=paths["base"], finetuned=paths["finetuned"], target=paths["target"], states=states)


@pytest.fixture(scope="session", params=[torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Family:
    """One family per dtype, shards of different boundaries in each model."""
    dtype = request.param
    return make_family(tmp_path_factory.mktemp(f"family-{str(dtype).removeprefix('torch.')}"), dtype=dtype)


@pytest.fixture(scope="session")
def bf16_family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return make_family(tmp_path_factory.mktemp("family-bf16-single"), dtype=torch.bfloat16, seed=5)


def read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def rewrite_tensor(folder: Path, name: str, value: torch.Tensor | None) -> None:
    """Replace (or, with None, drop; or add) one tensor in a saved folder, keeping its index right."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    shard = folder / (
        index["weight_map"].get(name, next(iter(index["weight_map"].values()))) if index else "model.safetensors"
    )
    with safe_open(str(shard), framework="pt") as f:
        part = {k: f.get_tensor(k) for k in f.keys()}
    if value is None:
        part.pop(name)
    else:
        part[name] = value
    save_file(part, str(shard), metadata={"format": "pt"})
    if index:
        if value is None:
            index["weight_map"].pop(name)
        else:
            index["weight_map"][name] = shard.name
        index_path.write_text(json.dumps(index))


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest) -> Testbed:
    """The shipped CPU test bed (seed 0, no control lineage), copied once into pytest's cache folder."""
    from graftwork.tasks.testbed import build_testbed

    root = request.config.cache.mkdir("graftwork-testbed")
    with (root / "lock").open("w") as lock:  # pytest-xdist workers take turns: the first copies, the rest reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_testbed(out=root / "seed0", seed=0, control=False)


@pytest.fixture(scope="session")
def testbed_suite(testbed: Testbed) -> Suite:
    """The test bed's exact-match task as a suite."""
    from graftwork.tasks.suite import Suite

    return Suite(name="testbed", tasks=(testbed.generate_task,), task_dirs=(testbed.task_dir,))


@pytest.fixture(scope="session")
def finetuned_m4(testbed: Testbed, testbed_suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    """FT(M4): 100 steps of the default recipe, evaluated every 50 steps."""
    from graftwork.tasks.training.finetune import finetune
    from graftwork.tasks.training.recipe import Recipe

    return finetune(
        model_dir=testbed.releases[-1],
        data=testbed.train_data,
        recipe=Recipe(steps=100),
        out_dir=tmp_path_factory.mktemp("ft") / "FT-M4",
        eval_every=50,
        eval_suite=testbed_suite,
        threads=1,
    )
