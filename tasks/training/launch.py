"""Multi-GPU fine-tuning: run the fine-tuning module under `accelerate launch` when a recipe asks for
several processes.

One process runs `python -m graftwork.tasks.training.finetune` as it is; more run it under accelerate with a
DDP, an FSDP or a DeepSpeed ZeRO-3 config (`deployments/accelerate/ddp.yaml`, `fsdp.yaml`, `deepspeed_zero3.yaml`),
whose `num_processes` is overridden by the launch's own. On a machine without CUDA the processes train on the
CPU and talk over gloo (DDP only: accelerate shards with FSDP or ZeRO-3 on accelerators alone)::

    python -m accelerate.commands.launch --config_file deployments/accelerate/fsdp.yaml --num_processes 2 \\
        -m graftwork.tasks.training.finetune --model-dir BASE --data train.jsonl --recipe recipe.json --out OUT
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ...errors import LaunchConfigError, LaunchError
from ...fs import die_with_parent

# The `distributed_type` an accelerate config must declare for each kind of launch.
DISTRIBUTED_TYPES = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}


class Launch(BaseModel):
    """How many processes fine-tune, and how they share the model. Frozen, like the recipe it goes with."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    processes: int = Field(1, ge=1, description="Training processes, one per GPU; 1 runs without accelerate.")
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "fsdp", description="DDP (a full copy per GPU), FSDP, or DeepSpeed ZeRO-3 (both shard the model)."
    )
    config: Path | None = Field(
        None, description="The accelerate config file; needed when processes > 1 (deployments/accelerate/*.yaml)."
    )


def check_config(*, launch: Launch) -> Path:
    """The launch's accelerate config file, once it is known to declare the launch's kind of distribution.

    Raises:
        LaunchConfigError: no config was given, or it cannot be read, is not a YAML mapping, or its
            `distributed_type` is not the one `launch.distributed` needs.
    """
    if launch.config is None:
        raise LaunchConfigError(
            f"a {launch.processes}-process launch needs an accelerate config file; "
            "pass one of deployments/accelerate/*.yaml as Launch.config.",
            path=None,
        )
    try:
        config = yaml.safe_load(launch.config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchConfigError(
            f"accelerate config {launch.config} cannot be read: {exc}.", path=launch.config
        ) from exc
    wanted = DISTRIBUTED_TYPES[launch.distributed]
    found = config.get("distributed_type") if isinstance(config, dict) else None
    if found != wanted:
        raise LaunchConfigError(
            f"accelerate config {launch.config} has distributed_type {found!r}, but a {launch.distributed} "
            f"launch needs {wanted!r}; pass the matching file from deployments/accelerate/.",
            path=launch.config,
        )
    return launch.config


def launch_command(
    *,
    launch: Launch,
    model_dir: Path,
    data: Path,
    recipe_json: Path,
    out_dir: Path,
    overwrite: bool = False,
    report: Path | None = None,
) -> list[str]:
    """The command line that fine-tunes `model_dir` on `data` with the recipe file `recipe_json` into `out_dir`.

    `recipe_json` holds the recipe's fields (JSON, which `graftwork.tasks.training.finetune` reads as YAML).

    Raises:
        LaunchConfigError: `launch.processes` > 1 and its config file does not fit (see `check_config`).
    """
    script = ["-m", "graftwork.tasks.training.finetune", "--model-dir", str(model_dir), "--data", str(data)]
    script += ["--recipe", str(recipe_json), "--out", str(out_dir)]
    if overwrite:
        script.append("--overwrite")
    if report is not None:
        script += ["--report", str(report)]
    if launch.processes == 1:
        return [sys.executable, *script]
    config = check_config(launch=launch)
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    return [*accelerate, "--num_processes", str(launch.processes), *script]


def run_launch(
    *,
    launch: Launch,
    model_dir: Path,
    data: Path,
    recipe_json: Path,
    out_dir: Path,
    overwrite: bool = False,
    report: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Fine-tune as `launch_command` says, in the foreground, with its output passed through.

    Args:
        env: the environment of the launch (None: this process's).

    Raises:
        LaunchConfigError: the config file does not fit the launch.
        LaunchError: the launch exited with a non-zero status.
    """
    command = launch_command(
        launch=launch,
        model_dir=model_dir,
        data=data,
        recipe_json=recipe_json,
        out_dir=out_dir,
        overwrite=overwrite,
        report=report,
    )
    status = subprocess.run(
        command, env=None if env is None else dict(env), check=False, preexec_fn=die_with_parent()
    ).returncode
    if status != 0:
        raise LaunchError(
            f"fine-tuning {model_dir} with {launch.processes} process(es) ({launch.distributed}) exited with "
            f"status {status}; its output above says why. Command: {' '.join(command)}",
            command=command,
            status=status,
        )
