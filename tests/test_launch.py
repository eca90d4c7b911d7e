"""The command lines that run fine-tuning on one process or, through accelerate, on several GPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser

from graftwork.errors import LaunchConfigError, LaunchError
from graftwork.tasks.training import finetune
from graftwork.tasks.training.launch import Launch, launch_command, run_launch
from graftwork.tasks.training.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
FSDP = ROOT / "deployments/accelerate/fsdp.yaml"
DEEPSPEED = ROOT / "deployments/accelerate/deepspeed_zero3.yaml"
DDP = ROOT / "deployments/accelerate/ddp.yaml"
PATHS = {
    "model_dir": Path("/data/models/base"),
    "data": Path("/data/train.jsonl"),
    "recipe_json": Path("/data/recipe.json"),
    "out_dir": Path("/data/out"),
}
SCRIPT = ["-m", "graftwork.tasks.training.finetune", "--model-dir", "/data/models/base", "--data", "/data/train.jsonl"]
SCRIPT += ["--recipe", "/data/recipe.json", "--out", "/data/out"]


@pytest.mark.parametrize(
    ("processes", "distributed", "config"), [(2, "fsdp", FSDP), (8, "deepspeed", DEEPSPEED)], ids=["fsdp", "deepspeed"]
)
def test_multi_gpu_launch_command(processes: int, distributed: Literal["fsdp", "deepspeed"], config: Path) -> None:
    command = launch_command(launch=Launch(processes=processes, distributed=distributed, config=config), **PATHS)
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    assert command == [*accelerate, "--num_processes", str(processes), *SCRIPT]


def test_one_process_runs_without_accelerate() -> None:
    assert launch_command(launch=Launch(), overwrite=True, **PATHS) == [sys.executable, *SCRIPT, "--overwrite"]


@pytest.mark.parametrize(("distributed", "config"), [("ddp", DDP), ("fsdp", FSDP), ("deepspeed", DEEPSPEED)])
def test_accelerate_accepts_the_launch_and_the_config(
    distributed: Literal["ddp", "fsdp", "deepspeed"], config: Path
) -> None:
    """accelerate's own parser takes the command, and the launch's process count overrides the config's."""
    command = launch_command(launch=Launch(processes=2, distributed=distributed, config=config), **PATHS)
    args = launch_command_parser().parse_args(command[3:])
    assert (args.config_file, args.num_processes, args.module) == (str(config), 2, True)
    assert (args.training_script, args.training_script_args) == ("graftwork.tasks.training.finetune", SCRIPT[2:])
    cluster = load_config_from_file(str(config))
    assert cluster.distributed_type.value == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[distributed]
    # DDP computes in the recipe's precision; the sharded kinds keep fp32 master shards and compute in bf16.
    assert (cluster.num_machines, cluster.mixed_precision) == (1, "no" if distributed == "ddp" else "bf16")
    assert isinstance(cluster.num_processes, int) and cluster.num_processes > 2


def test_finetune_main_takes_the_script_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The arguments after `-m graftwork.tasks.training.finetune` are the ones finetune.main parses, recipe JSON
    included."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": 3, "precision": "bf16"}))
    seen: dict[str, object] = {}

    def fake_finetune(**kwargs: object) -> finetune.FinetuneResult:
        seen.update(kwargs)
        return finetune.FinetuneResult(out_dir=tmp_path, loss_curve=(), eval_curve=(), seconds=0.0)

    monkeypatch.setattr(finetune, "finetune", fake_finetune)
    command = launch_command(launch=Launch(processes=2, config=FSDP), **{**PATHS, "recipe_json": recipe})
    finetune.main(command[command.index("graftwork.tasks.training.finetune") + 1 :])
    assert seen == {
        "model_dir": PATHS["model_dir"],
        "data": PATHS["data"],
        "recipe": Recipe(steps=3, precision="bf16"),
        "out_dir": PATHS["out_dir"],
        "overwrite": False,
    }


def test_config_must_match_the_kind_of_launch(tmp_path: Path) -> None:
    with pytest.raises(LaunchConfigError, match=r"distributed_type 'FSDP'.*'DEEPSPEED'"):
        launch_command(launch=Launch(processes=2, distributed="deepspeed", config=FSDP), **PATHS)
    with pytest.raises(LaunchConfigError, match="needs an accelerate config file"):
        launch_command(launch=Launch(processes=2), **PATHS)
    with pytest.raises(LaunchConfigError, match="cannot be read"):
        launch_command(launch=Launch(processes=2, config=tmp_path / "missing.yaml"), **PATHS)
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(["FSDP"]))
    with pytest.raises(LaunchConfigError, match="distributed_type None"):
        launch_command(launch=Launch(processes=2, config=tmp_path / "list.yaml"), **PATHS)


@pytest.mark.slow
def test_run_launch_names_the_exit_status(tmp_path: Path) -> None:
    """A failed launch (here: the model folder does not exist) is a LaunchError naming its status."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    with pytest.raises(LaunchError, match="exited with status 1"):
        run_launch(
            launch=Launch(),
            model_dir=tmp_path / "no-model",
            data=tmp_path / "train.jsonl",
            recipe_json=recipe,
            out_dir=tmp_path / "out",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )
