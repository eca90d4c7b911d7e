"""`graft plan`: the GPU memory and scratch disk a track's fine-tune needs, from its model's config alone; and the
check `graft track add` makes with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .console import err, open_registry, say, user_errors
from .console import settings as console_settings

if TYPE_CHECKING:
    from ..tasks.track import TrackSpec

Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Plan on this model instead of the track's newest release: a local model folder (only its config.json "
        "is read) or org/name@revision on the Hub (its config.json only). deployments/models/ holds the example "
        "tracks' configs.",
    ),
]


def plan(
    track: Annotated[str, typer.Argument(help="A track YAML file, or the name of a registered track.")],
    model: Model = None,
) -> None:
    """Print what a track's fine-tune needs, from its model's config alone (no weights are fetched): the
    parameters, the GPU memory per process for weights, gradients, optimizer state and activations (full,
    LoRA, FSDP, ZeRO-3 and the track's own set-up), the scratch disk of a recycle run, and whether it fits
    the pool's GPUs (GRAFT_POOL_GPUS of GRAFT_POOL_GPU_MEMORY_GIB each)."""
    from ..errors import TrackError
    from ..operations.capacity import find_config, heading, newest_release, plan_track
    from ..operations.tracks import load_spec
    from ..tasks.track import load_track
    from ..tasks.training.plan import render

    settings = console_settings()
    with user_errors():
        spec = load_track(Path(track)) if Path(track).is_file() else load_spec(open_registry(), track=track)
        if spec.finetune.command is not None:
            raise TrackError(
                f"track {spec.name} trains with its own command ({spec.finetune.command.argv[0]} ...), whose memory "
                "Graftwork does not know: plan it with the tools of that trainer.",
                track=spec.name,
            )
        config, origin = find_config(
            spec, model=model, newest=lambda: newest_release(open_registry(), track=spec.name), online=True
        )
        the_plan = plan_track(
            spec,
            config=config,
            origin=origin,
            pool_gpus=settings.pool_gpus,
            gpu_memory_gib=settings.pool_gpu_memory_gib,
        )
    say(render(the_plan, heading=heading(spec, origin=origin)))


def check_track(spec: TrackSpec, *, model: str | None) -> None:
    """Refuse a track whose fine-tune does not fit the pool's GPUs. Without `model`, the track's own model is
    planned when its config is at hand without the network (a local release, the Hub cache); when it is not,
    a note on stderr says so and the track is not checked.

    Raises:
        GpuFitError: the track does not fit (the message holds the plan's table).
        PlanModelError, ModelFolderError, ModelRefError: `model` is given and its config cannot be read.
    """
    from ..errors import PlanModelError
    from ..operations.capacity import check_fits, find_config, newest_release, plan_track

    if spec.finetune.command is not None:
        err.print(
            f"note: not checked against the pool's GPUs: track {spec.name} trains with its own command, whose memory "
            "Graftwork does not know; it runs on the GPUs of its launch (finetune.launch.processes).",
            highlight=False, soft_wrap=True, markup=False,
        )  # fmt: skip
        return
    settings = console_settings()
    try:
        config, origin = find_config(
            spec,
            model=model,
            newest=lambda: newest_release(open_registry(), track=spec.name),
            online=model is not None,
        )
    except PlanModelError as exc:
        if model is not None:
            raise
        err.print(f"note: not checked against the pool's GPUs: {exc}", highlight=False, soft_wrap=True, markup=False)
        return
    the_plan = plan_track(
        spec, config=config, origin=origin, pool_gpus=settings.pool_gpus, gpu_memory_gib=settings.pool_gpu_memory_gib
    )
    check_fits(spec, plan=the_plan, origin=origin)
