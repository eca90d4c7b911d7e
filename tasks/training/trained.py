"""What a track's own training command wrote, checked and made a candidate: a model folder of the start's
architecture and tensor names and shapes, or a peft LoRA adapter for the start, merged onto it. The candidate is
then the same kind of folder the built-in recipe writes (the start's dtype, tokenizer and generation config)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ...errors import ArchitectureMismatchError, ModelFolderError, ShapeMismatchError, TensorSetMismatchError
from ...fs import atomic_output_dir
from ..io.checkpoints import open_model_folder
from ..io.layout import GENERATION_CONFIG, SAFETENSORS_INDEX, TOKENIZER_FILES
from .candidate import ADAPTER_CONFIG, folder_dtype, saved_dtypes, write_candidate
from .command import OnLine, TrainerCommand, run_command
from .report import FinetuneReport

OUTPUT_CONTRACT = (
    "the output folder must hold a model folder of the start's architecture (config.json and safetensors weights "
    "with the start's tensor names and shapes), or a peft LoRA adapter (adapter_config.json and its weights)"
)


def check_trained(*, staged: Path, start: Path) -> None:
    """Check that the command's output `staged` is a model of `start`'s architecture, tensor names and shapes, or a
    LoRA adapter.

    Raises:
        ModelFolderError: it holds no weights, or no config (or pickle weights only).
        ArchitectureMismatchError: its model_type or architectures differ from the start's.
        TensorSetMismatchError: it lacks tensors of the start's, or has others.
        ShapeMismatchError: a tensor's shape differs from the start's.
    """
    if (staged / ADAPTER_CONFIG).is_file():
        if not any(staged.glob("adapter_model.*")):
            raise ModelFolderError(
                f"the training command wrote {ADAPTER_CONFIG} but no adapter weights in {staged}; {OUTPUT_CONTRACT}.",
                path=staged,
            )
        return
    if not staged.is_dir() or not any(staged.iterdir()):
        raise ModelFolderError(f"the training command wrote nothing in {staged}; {OUTPUT_CONTRACT}.", path=staged)
    try:
        theirs = open_model_folder(staged)
    except ModelFolderError as e:
        raise ModelFolderError(
            f"the training command's output is not a model: {e} ({OUTPUT_CONTRACT})", path=staged
        ) from None
    mine = open_model_folder(start)
    for key in ("model_type", "architectures"):
        if theirs.config.get(key) != mine.config.get(key):
            raise ArchitectureMismatchError(
                f"the training command wrote a model with {key}={theirs.config.get(key)!r}, but the start ({start}) "
                f"has {mine.config.get(key)!r}; it must train the start model it is given ({{start}}).",
                path=staged,
            )
    missing = sorted(set(mine.tensors) - set(theirs.tensors))
    extra = sorted(set(theirs.tensors) - set(mine.tensors))
    if missing or extra:
        raise TensorSetMismatchError(
            f"the training command's model lacks tensors {missing[:5]} and has tensors {extra[:5]} that the start "
            "does not; it must save the start model's layout (merge adapters, keep the tensor names).",
            tensor=(missing or extra)[0],
        )
    for name, info in sorted(mine.tensors.items()):
        if theirs.tensors[name].shape != info.shape:
            shapes = {"start": info.shape, "trained": theirs.tensors[name].shape}
            raise ShapeMismatchError(
                f"tensor {name!r} has shape {list(theirs.tensors[name].shape)} in the training command's model "
                f"but {list(info.shape)} in the start; it must keep the start's shapes.",
                tensor=name,
                shapes=shapes,
            )


def candidate_from(*, staged: Path, start: Path, out: Path) -> None:
    """Write the candidate for the checked output `staged` into the (empty, existing) folder `out`: its config and
    weights in the start's dtype (moved when they are; an adapter merged onto the start by peft, or weights of
    another dtype cast, by transformers), with the start's tokenizer and generation config where the output has
    none. Anything else the command left (checkpoints, logs) stays behind.

    Raises:
        ModelFolderError: `staged` or `start` cannot be loaded.
    """
    dtype = folder_dtype(start)
    if (staged / ADAPTER_CONFIG).is_file() or saved_dtypes(staged) != {dtype}:
        write_candidate(staged=staged, start=start, dtype=dtype, out=out)  # merged or cast: saved afresh
    else:  # the model's own files only, not the trainer's checkpoints and logs beside them
        model = open_model_folder(staged)
        index = [staged / SAFETENSORS_INDEX] if (staged / SAFETENSORS_INDEX).is_file() else []
        for path in (staged / "config.json", *model.weight_files, *index):
            shutil.move(str(path), out / path.name)
    for name in (*TOKENIZER_FILES, GENERATION_CONFIG):
        source = staged / name if (staged / name).is_file() else start / name
        if source.is_file() and not (out / name).exists():
            shutil.copyfile(source, out / name)


def train_with_command(
    *,
    command: TrainerCommand,
    start: Path,
    data: Path,
    processes: int,
    work: Path,
    env: Mapping[str, str],
    device: str,
    out: Path,
    on_line: OnLine,
) -> FinetuneReport:
    """Run the track's own training `command` on `start` in the run's working folder `work` (its output in
    `work/trainer-output`, its log in `work/trainer.log`), check what it wrote and write the candidate at `out`
    atomically; return its report (the loss by step where the command left a transformers `trainer_state.json`).

    Raises:
        TrainerCommandError: a file the command names changed since the track was added, or the command failed,
            could not start or ran past its timeout.
        ModelFolderError, ArchitectureMismatchError, TensorSetMismatchError, ShapeMismatchError: its output is not
            a model of the start's layout, nor a LoRA adapter (`check_trained`).
    """
    command.check_files()
    staged = work / "trainer-output"
    if staged.exists():
        shutil.rmtree(staged)  # an earlier attempt's: a command starts from an empty folder
    staged.mkdir(parents=True)
    began = datetime.now(UTC)
    argv = command.formatted(start=start, output=staged, data=data, processes=processes)
    seconds = run_command(
        argv=argv, cwd=work, env=env, timeout_s=command.timeout_minutes * 60, log=work / "trainer.log", on_line=on_line
    )
    check_trained(staged=staged, start=start)
    with atomic_output_dir(out, overwrite=True) as tmp:
        candidate_from(staged=staged, start=start, out=tmp)
    return FinetuneReport(
        out_dir=out,
        loss_curve=loss_curve(staged),
        seconds=seconds,
        tokens=0,
        device=device,
        processes=processes,
        started_at=began,
        finished_at=datetime.now(UTC),
    )


def loss_curve(staged: Path) -> tuple[tuple[int, float], ...]:
    """The training loss by step from the newest `trainer_state.json` the command left in `staged` (in it, or in its
    last `checkpoint-N` folder); empty when there is none."""
    found = [staged / "trainer_state.json"] if (staged / "trainer_state.json").is_file() else []
    checkpoints = sorted(staged.glob("checkpoint-*/trainer_state.json"), key=lambda p: _step_of(p.parent.name))
    for path in [*found, *checkpoints[-1:]]:
        try:
            history = json.loads(path.read_text()).get("log_history", [])
        except (OSError, ValueError, AttributeError):
            continue
        return tuple((int(e["step"]), float(e["loss"])) for e in history if "loss" in e and "step" in e)
    return ()


def _step_of(name: str) -> int:
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1
