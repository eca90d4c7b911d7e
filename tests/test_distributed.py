"""Fine-tuning on several processes for real: a 2-process DDP launch over gloo on the CPU equals the one-process
run, and the shipped FSDP config shards each architecture by its own decoder layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

from graftwork.operations.shipped import accelerate_config
from graftwork.tasks.testbed import Testbed
from graftwork.tasks.training.finetune import finetune
from graftwork.tasks.training.launch import Launch, launch_command, run_launch
from graftwork.tasks.training.recipe import Recipe
from tests.conftest import load_state

TOLERANCE = 1e-6
"""Largest |one process − two processes| allowed per weight after 4 steps; the steps themselves move weights
by ~6e-4, so a rank that trained on the wrong examples, or alone, is three orders of magnitude out."""
DPO_TOLERANCE = 1e-4
"""The same after an sft stage and a dpo stage, whose loss curves the test holds to 1e-5 (see the test)."""


@pytest.mark.slow
def test_two_processes_fine_tune_as_one_process_does(testbed: Testbed, tmp_path: Path) -> None:
    """Two DDP processes with 8 examples each per step take the same steps as one process with 16: the
    shipped ddp.yaml, accelerate's launcher, torchrun and gloo all run, nothing replaced."""
    recipe = Recipe(steps=4, batch_size=8, warmup_steps=0)
    recipe_json = tmp_path / "recipe.json"
    recipe_json.write_text(recipe.model_dump_json())
    launch = Launch(processes=2, distributed="ddp", config=accelerate_config("ddp"))
    report = tmp_path / "report.json"
    base = testbed.releases[0]
    run_launch(launch=launch, model_dir=base, data=testbed.train_data, recipe_json=recipe_json,
               out_dir=tmp_path / "two", report=report)  # fmt: skip
    one = finetune(
        model_dir=base,
        data=testbed.train_data,
        recipe=recipe.model_copy(update={"batch_size": 16}),
        out_dir=tmp_path / "one",
    )
    two = json.loads(report.read_text())
    assert two["processes"] == 2 and one.processes == 1
    assert two["tokens"] == one.tokens  # both processes' tokens, counted once each
    assert [step for step, _ in two["loss_curve"]] == [1, 2, 3, 4]
    assert [loss for _, loss in two["loss_curve"]] == pytest.approx([loss for _, loss in one.loss_curve], abs=1e-5)
    a, b, start = load_state(tmp_path / "one"), load_state(tmp_path / "two"), load_state(base)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1000 * TOLERANCE
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_sft_then_dpo_on_two_processes_trains_as_one_process_does(testbed: Testbed, tmp_path: Path) -> None:
    """Both stages under the same DDP launch: the dpo stage starts from the model the sft stage wrote, which the
    main process publishes and every rank then reads; two processes with half the examples (and pairs) each take
    the steps one process takes, and the stage's model in between is gone."""
    stages = [{"kind": "sft"}, {"kind": "dpo", "data": str(testbed.preference_data), "steps": 3, "batch_size": 4}]
    recipe = Recipe.model_validate({"steps": 2, "batch_size": 8, "warmup_steps": 0, "stages": stages})
    recipe_json = tmp_path / "recipe.json"
    recipe_json.write_text(recipe.model_dump_json())
    launch = Launch(processes=2, distributed="ddp", config=accelerate_config("ddp"))
    report, base = tmp_path / "report.json", testbed.releases[0]
    run_launch(launch=launch, model_dir=base, data=testbed.train_data, recipe_json=recipe_json,
               out_dir=tmp_path / "two", report=report)  # fmt: skip
    doubled = [{**stages[0]}, {**stages[1], "batch_size": 8}]
    one = finetune(
        model_dir=base,
        data=testbed.train_data,
        recipe=Recipe.model_validate({**json.loads(recipe_json.read_text()), "batch_size": 16, "stages": doubled}),
        out_dir=tmp_path / "one",
    )
    two = json.loads(report.read_text())
    assert [step for step, _ in two["loss_curve"]] == [1, 2, 3, 4, 5]
    assert [loss for _, loss in two["loss_curve"]] == pytest.approx([loss for _, loss in one.loss_curve], abs=1e-5)
    # DPO's gradients nearly cancel on many weights (tokens both answers share), and AdamW's step on a gradient near
    # its ε follows how the batch was summed: the weights agree to 2.5e-5 (measured), of moves up to 3.5e-3.
    a, b, start = load_state(tmp_path / "one"), load_state(tmp_path / "two"), load_state(base)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < DPO_TOLERANCE
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 20 * DPO_TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "recipe.json", "report.json", "two"]


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 64}  # fmt: skip


@pytest.mark.parametrize(
    ("model_type", "layer"),
    [
        ("llama", "LlamaDecoderLayer"),
        ("olmo2", "Olmo2DecoderLayer"),
        ("qwen2", "Qwen2DecoderLayer"),
        ("mistral", "MistralDecoderLayer"),
    ],
)
def test_fsdp_shards_each_architecture_by_its_own_decoder_layer(
    model_type: str, layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment accelerate's launcher derives from the shipped fsdp.yaml gives a plugin that wraps the
    model's `_no_split_modules`: its decoder layer, whatever the architecture (the old config named
    LlamaDecoderLayer and failed on every other)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    command = launch_command(
        launch=Launch(processes=2, distributed="fsdp", config=accelerate_config("fsdp")),
        model_dir=Path("m"), data=Path("d"), recipe_json=Path("r"), out_dir=Path("o"),
    )  # fmt: skip
    args = launch_command_parser().parse_args(command[3:])
    args, *_ = _validate_launch_command(args)
    for name, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(name, value)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **TINY))
    plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)
    assert plugin.transformer_cls_names_to_wrap == [layer]
    assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {
        type(model.model.layers[0])
    }


def test_the_shipped_configs_match_their_launch_kind() -> None:
    for kind, wanted in (("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")):
        config = yaml.safe_load(accelerate_config(kind).read_text())
        assert config["distributed_type"] == wanted
        assert "fsdp_transformer_layer_cls_to_wrap" not in config.get("fsdp_config", {})
