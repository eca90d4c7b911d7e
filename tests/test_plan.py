"""The fine-tuning planner: parameters counted from a config alone, the bytes of each component checked against
figures computed here by hand for a tiny Llama, the exact table `graft plan` prints, and `graft track add`
refusing a track that does not fit the pool's GPUs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import constants
from typer.testing import CliRunner

from graftwork.deployments.cli import app
from graftwork.errors import FinetuneConfigError, ModelFolderError
from graftwork.tasks.training.plan import Setup, activation_bytes, footprint, model_shape, plan_finetune
from graftwork.tasks.training.recipe import Lora, Recipe, Stage

ROOT = Path(__file__).resolve().parents[1]
MODELS, TRACKS = ROOT / "deployments" / "models", ROOT / "deployments" / "tracks"
# hidden 32, MLP 64, 2 layers, 4 heads of 8 with 2 key/value heads (k and v project 32 -> 16), vocabulary 100.
TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# Per layer: q 32·32 + k 32·16 + v 32·16 + o 32·32 + gate, up, down 3·32·64 + two norms 2·32 = 9280; then the
# embeddings and the untied head 2·100·32, and the final norm 32.
PARAMS = 2 * 9280 + 2 * 100 * 32 + 32
# LoRA r adds r·(in + out) to each linear layer of the decoder (all-linear leaves the head out).
LORA4 = 2 * 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 3 * (32 + 64))
# Korthikanti et al., bf16, b=2, s=16, h=32: 34·s·b·h per layer, then 4·s·b·h + 4·s·b·V.
SBH = 16 * 2 * 32
ACTIVATIONS = 2 * 34 * SBH + 4 * SBH + 4 * 16 * 2 * 100
RECIPE = Recipe(precision="bf16", batch_size=2, seq_len=16, peft=Lora(r=4))

runner = CliRunner()


def test_the_tiny_counts_are_the_hand_counts() -> None:
    assert (PARAMS, LORA4) == (24992, 4096)
    shape = model_shape(config=TINY, lora=Lora(r=4), origin="tiny")
    assert (shape.params, shape.adapter_params, shape.hidden, shape.layers, shape.vocab) == (24992, 4096, 32, 2, 100)
    qv = model_shape(config=TINY, lora=Lora(r=4, target_modules=("q_proj", "v_proj")), origin="tiny")
    assert qv.adapter_params == 2 * 4 * ((32 + 32) + (32 + 16)) == 896


def test_each_component_is_the_hand_computed_figure() -> None:
    shape = model_shape(config=TINY, lora=Lora(r=4), origin="tiny")
    p, a = PARAMS, LORA4
    assert activation_bytes(shape=shape, recipe=RECIPE) == ACTIVATIONS == 86528
    checkpointed = RECIPE.model_copy(update={"gradient_checkpointing": True})
    assert activation_bytes(shape=shape, recipe=checkpointed) == 2 * 2 * SBH + 34 * SBH + 4 * SBH + 12800 == 55808
    fp32 = RECIPE.model_copy(update={"precision": "fp32"})
    assert activation_bytes(shape=shape, recipe=fp32) == 2 * 68 * SBH + 8 * SBH + 12800 == 160256

    def parts(recipe: Recipe, setup: Setup) -> tuple[int, int, int]:
        f = footprint(shape=shape, recipe=recipe, setup=setup)
        return f.weights, f.gradients, f.optimizer

    full, lora = (
        Setup("full", lora=False, processes=1, sharded=False),
        Setup("LoRA", lora=True, processes=1, sharded=False),
    )
    fsdp2, lora_fsdp2 = Setup("FSDP", False, 2, True), Setup("LoRA, FSDP", True, 2, True)
    assert parts(RECIPE, full) == (4 * p, 6 * p, 8 * p)  # fp32 masters under bf16 autocast (accelerate's AMP)
    assert parts(fp32, full) == (4 * p, 4 * p, 8 * p)
    assert parts(RECIPE.model_copy(update={"precision": "fp16"}), full) == (4 * p, 6 * p, 8 * p)  # accelerate's AMP
    assert parts(RECIPE, lora) == (2 * p + 4 * a, 4 * a, 8 * a) == (66368, 16384, 32768)
    assert parts(fp32, lora) == (4 * p + 4 * a, 4 * a, 8 * a)
    assert parts(RECIPE, fsdp2) == (4 * p // 2, 4 * p // 2, 8 * p // 2) == (49984, 49984, 99968)
    assert parts(RECIPE, lora_fsdp2) == ((4 * p + 4 * a) // 2, 4 * a // 2, 8 * a // 2) == (58176, 8192, 16384)


def test_the_plan_marks_the_tracks_own_setup_and_counts_scratch() -> None:
    shape = model_shape(config=TINY, lora=Lora(r=4), origin="tiny")
    plan = plan_finetune(
        shape=shape, recipe=RECIPE, processes=2, distributed="deepspeed", pool_gpus=2, gpu_memory_gib=0.0002
    )
    assert [(r.setup.label, r.setup.processes, r.total) for r in plan.rows] == [
        ("full", 1, 536384),
        ("LoRA r=4", 1, 202048),
        ("FSDP", 2, 286464),
        ("ZeRO-3", 2, 286464),
        ("LoRA r=4, ZeRO-3", 2, 169280),
    ]
    assert plan.track is plan.rows[-1] and plan.track_fits  # 169280 < 0.0002 GiB = 214748 bytes
    assert [plan.fits(r) for r in plan.rows] == [False, True, False, False, True]
    # start model and candidate in bf16, Δ in float32 (a float32 base's Δ may need float64: 8 bytes).
    assert (plan.scratch.start, plan.scratch.candidate, plan.scratch.delta) == (2 * PARAMS, 2 * PARAMS, 4 * PARAMS)
    fp32_base = model_shape(config={**TINY, "torch_dtype": "float32"}, lora=Lora(), origin="tiny")
    plan32 = plan_finetune(
        shape=fp32_base, recipe=RECIPE, processes=1, distributed="fsdp", pool_gpus=1, gpu_memory_gib=1
    )
    assert plan32.scratch.total == 4 * PARAMS + 4 * PARAMS + 8 * PARAMS
    assert plan32.rows[1].setup.label == "LoRA r=16" and plan32.shape.adapter_params == 4 * LORA4


def test_a_dpo_stage_counts_its_reference_model_for_full_training_and_none_for_lora() -> None:
    shape = model_shape(config=TINY, lora=Lora(r=4), origin="tiny")
    dpo = RECIPE.model_copy(update={"stages": (Stage(kind="sft"), Stage(kind="dpo", data=Path("prefs.jsonl")))})
    p, a, n = PARAMS, LORA4, 2
    # DPO runs chosen and rejected in one forward: the activations of a micro-batch twice as large.
    doubled = activation_bytes(shape=shape, recipe=RECIPE.model_copy(update={"batch_size": 4}))
    assert doubled == 2 * 34 * 2 * SBH + 4 * 2 * SBH + 4 * 16 * 4 * 100 == 173056
    rows = {
        label: footprint(shape=shape, recipe=dpo, setup=Setup(label, lora=lora, processes=k, sharded=sharded))
        for label, lora, k, sharded in [("full", False, 1, False), ("lora", True, 1, False), ("fsdp", False, n, True)]
    }
    # Full: a second copy of the start's weights in the policy's fp32; FSDP shards it; LoRA needs none (adapter off).
    assert {label: row.reference for label, row in rows.items()} == {"full": 4 * p, "lora": 0, "fsdp": 4 * p // n}
    assert rows["full"].total == 4 * p + 6 * p + 8 * p + doubled + 4 * p == 722880
    assert rows["lora"].total == 2 * p + 4 * a + 4 * a + 8 * a + doubled == 288576
    # The sft stage alone holds no reference and half the activations: each row is its hungriest stage.
    sft_only = footprint(shape=shape, recipe=RECIPE, setup=Setup("full", lora=False, processes=1, sharded=False))
    assert (sft_only.reference, rows["full"].total - sft_only.total) == (0, doubled - ACTIVATIONS + 4 * p)
    plan = plan_finetune(shape=shape, recipe=dpo, processes=1, distributed="ddp", pool_gpus=1, gpu_memory_gib=1)
    assert plan.scratch.stage == 2 * p  # the sft stage's model, until the dpo stage has written the candidate


def _track(tmp_path: Path, *, name: str = "tiny", source: dict[str, Any] | None = None, **finetune: Any) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q: 1+1?", "completion": "2"}\n')
    spec = {
        "name": name,
        "source": source or {"kind": "hub-repos", "author": "org", "name_pattern": "m-*"},
        "finetune": {"data": str(data), **finetune},
        "eval": {"tasks": ["x"]},
        "gate": {"metrics": [{"task": "x", "metric": "acc"}]},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def graft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GRAFT_DATA_DIR", str(tmp_path / "data"))
    for var in ("GRAFT_DATABASE_URL", "GRAFT_BLOB_URL", "GRAFT_POOL_GPUS", "GRAFT_POOL_GPU_MEMORY_GIB"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str, code: int = 0) -> tuple[str, str]:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.stdout, result.stderr

    return run


def test_graft_plan_prints_the_hand_computed_table(graft: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    track = _track(
        tmp_path,
        recipe={"precision": "bf16", "batch_size": 2, "seq_len": 16, "peft": {"r": 4}},
        launch={"processes": 2, "distributed": "fsdp"},
    )
    monkeypatch.setenv("GRAFT_POOL_GPUS", "2")
    monkeypatch.setenv("GRAFT_POOL_GPU_MEMORY_GIB", "0.0002")
    out, _ = graft("plan", str(track), "--model", str(model))
    # KiB of the figures above: 2P = 49984 B = 48.81, 4P = 97.62, 6P = 146.44, 8P = 195.25, 2P + 4A = 64.81,
    # 4A = 16.00, 8A = 32.00, (4P + 4A)/2 = 56.81, 2A = 8.00, 4A = 16.00 (LoRA over FSDP), activations 86528 B
    # = 84.50.
    assert out == (
        f"plan of track tiny on {model}\n"
        "parameters: 24,992 (llama, bfloat16: 48.81 KiB); LoRA r=4 on all-linear: 4,096 trainable\n"
        "recipe: bf16, micro-batch 2 x 16 tokens, gradient checkpointing off\n"
        "pool: 2 GPU(s) of 0.0002 GiB\n"
        "GPU memory per process, KiB:\n"
        "  set-up             GPUs   weights  gradients  optimizer  activations     total  fits\n"
        "  full                  1     97.62     146.44     195.25        84.50    523.81  no\n"
        "  LoRA r=4              1     64.81      16.00      32.00        84.50    197.31  yes\n"
        "  FSDP                  2     48.81      48.81      97.62        84.50    279.75  no\n"
        "  ZeRO-3                2     48.81      48.81      97.62        84.50    279.75  no\n"
        "* LoRA r=4, FSDP        2     56.81       8.00      16.00        84.50    165.31  yes\n"
        "* the track's set-up: 165.31 KiB per process on 2 GPU(s): fits the pool's 2 GPU(s) of 0.0002 GiB\n"
        "scratch disk per recycle run: 195.25 KiB = start model 48.81 + candidate 48.81 + Δ 97.62\n"
        "activations (Korthikanti et al. 2022; b x s tokens, hidden h, vocabulary V): 34·s·b·h bytes per layer,\n"
        "  or 2·s·b·h with gradient checkpointing plus one layer's 34·s·b·h; then 4·s·b·h + 4·s·b·V for the head\n"
        "  and the fp32 loss; fp32 recipes hold twice the s·b·h terms\n"
    )


def test_the_example_models_have_their_published_sizes() -> None:
    llama = json.loads((MODELS / "llama-3.1-8b" / "config.json").read_text())
    olmo = json.loads((MODELS / "olmo-2-1124-7b" / "config.json").read_text())
    assert model_shape(config=llama, lora=Lora(), origin="llama").params == 8_030_261_248
    assert model_shape(config=llama, lora=Lora(), origin="llama").adapter_params == 32 * 16 * 81920 == 41_943_040
    assert model_shape(config=olmo, lora=Lora(), origin="olmo").params == 7_298_617_344


# Each example track's own row (*) on its model's shipped config: it fits one node of 8 GPUs of 80 GiB.
EXAMPLES = {
    "llama-3-8b-instruct": (
        "llama-3.1-8b",
        "* FSDP                  8      3.74       3.74       7.48        28.41     43.36  yes",
    ),
    "llama-3-8b-turkish": (
        "llama-3.1-8b",
        "* FSDP                  8      3.74       3.74       7.48        14.20     29.16  yes",
    ),
    "llama-3-8b-dpo": (  # SFT then DPO: the reference model sharded over the 8 GPUs
        "llama-3.1-8b",
        "* FSDP                  8      3.74       3.74       7.48        14.20       3.74     32.90  yes",
    ),
    "olmo-2-7b-checkpoints": (
        "olmo-2-1124-7b",
        "* FSDP                  8      3.40       3.40       6.80        12.50     26.09  yes",
    ),
}


@pytest.mark.parametrize("track", sorted(EXAMPLES))
def test_the_example_tracks_fit_one_8_gpu_node_of_80_gib(graft: Any, track: str) -> None:
    model, row = EXAMPLES[track]
    out, _ = graft("plan", str(TRACKS / f"{track}.yaml"), "--model", str(MODELS / model))
    assert row in out.splitlines()


def test_track_add_refuses_a_full_8b_fine_tune_on_one_gpu(graft: Any, tmp_path: Path) -> None:
    recipe = {"precision": "bf16", "batch_size": 8, "seq_len": 4096}
    llama = str(MODELS / "llama-3.1-8b")
    _, err = graft("track", "add", str(_track(tmp_path, name="big", recipe=recipe)), "--model", llama, code=1)
    assert err.startswith(
        "error: track big does not fit the pool's 8 GPU(s) of 80 GiB: its fine-tune (full on 1 GPU(s)) needs "
        "286.77 GiB per process. Train a LoRA adapter (finetune.recipe.peft), turn on "
        "finetune.recipe.gradient_checkpointing, lower batch_size or seq_len, or shard over more GPUs "
        "(finetune.launch: {processes: 8, distributed: fsdp}); if the pool's GPUs are other than these, set "
        "GRAFT_POOL_GPUS and GRAFT_POOL_GPU_MEMORY_GIB.\n"
        f"plan of track big on {llama}\n"
    )
    assert "* full                  1     29.92      44.87      59.83       152.16    286.77  no\n" in err
    out, _ = graft("track", "list")
    assert out == "no tracks yet: `graft track add FILE`\n"
    lora = {**recipe, "gradient_checkpointing": True, "peft": {"r": 16}}
    out, _ = graft("track", "add", str(_track(tmp_path, name="big", recipe=lora)), "--model", llama)
    assert out == "added track big (hub-repos releases, iterative recycling), spec version 1\n"
    fsdp = {"recipe": {**recipe, "gradient_checkpointing": True}, "launch": {"processes": 8, "distributed": "fsdp"}}
    out, _ = graft("track", "add", str(_track(tmp_path, name="big", **fsdp)), "--model", llama)
    updated = "updated track big (hub-repos releases, iterative recycling): spec version 2"
    assert out == f"{updated} (candidates made before keep theirs)\n"


def test_a_track_whose_model_is_unknown_needs_model(graft: Any, tmp_path: Path) -> None:
    _, err = graft("plan", str(_track(tmp_path)), code=1)
    assert err == (
        "error: track tiny watches Hub repos of org named 'm-*' and knows no release yet, so its model is unknown: "
        "pass --model with a model folder or org/name@revision (deployments/models/ holds the example tracks' "
        "configs).\n"
    )
    refs = _track(tmp_path, source={"kind": "hub-refs", "repo": "org/m", "ref_pattern": "step*"})
    _, err = graft("plan", str(refs), code=1)
    assert err == (
        f"error: track tiny: the config of org/m@main cannot be read (Cannot get org/m@main config.json from "
        f"{constants.ENDPOINT}: HF_HUB_OFFLINE is set and it is not in the local cache: unset HF_HUB_OFFLINE to "
        "download it.) Pass --model with a local model folder that holds its config.json (deployments/models/ "
        "holds the example tracks' configs).\n"
    )
    out, err = graft("track", "add", str(refs))  # not planned without the network: added, with a note
    assert out == "added track tiny (hub-refs releases, iterative recycling), spec version 1\n"
    assert err.startswith("note: not checked against the pool's GPUs: track tiny: the config of org/m@main")


def test_a_bad_config_or_lora_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"^tiny does not describe a causal language model transformers can"):
        model_shape(config={**TINY, "model_type": "no-such-model"}, lora=Lora(), origin="tiny")
    with pytest.raises(ModelFolderError, match=r"^tiny declares dtype 'int8'; the planner knows bfloat16, float16"):
        model_shape(config={**TINY, "torch_dtype": "int8"}, lora=Lora(), origin="tiny")
    with pytest.raises(FinetuneConfigError, match=r"^the LoRA target_modules \('wq',\) name no module of the model"):
        model_shape(config=TINY, lora=Lora(target_modules=("wq",)), origin="tiny")
