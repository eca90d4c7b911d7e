"""Planning a track's fine-tune: the config of the model it would train (no weights), the plan of
`tasks.training.plan` for the track's recipe and launch, and the check `graft track add` makes with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import (
    GpuFitError,
    HubNotFoundError,
    HubPermissionError,
    HubUnavailableError,
    NotFoundError,
    PlanModelError,
)
from ..storage import Registry, releases
from ..storage import registry as rows
from ..storage.db import session_scope
from ..tasks.hub import ReleaseRef, fetch_config, parse_model_ref
from ..tasks.track import TrackSpec
from ..tasks.training.plan import FinetunePlan, model_shape, plan_finetune, read_config, render
from ..tasks.training.recipe import Lora

MODELS_HINT = "deployments/models/ holds the example tracks' configs"


def newest_release(registry: Registry, *, track: str) -> ReleaseRef | None:
    """The newest release the registry knows of a track, in its source's order (None: none, or no such track).

    Raises:
        DatabaseError: the registry cannot be reached.
    """
    with session_scope(registry.engine) as session:
        try:
            found = releases.in_order(session, track=rows.get_track(session, name=track))
        except NotFoundError:
            return None
        if not found:
            return None
        last = found[-1]
        path = None if last.path is None else Path(last.path)
        return ReleaseRef(repo_id=last.repo_id, revision=last.revision, ref=last.ref, path=path)


def find_config(
    spec: TrackSpec, *, model: str | None, newest: Callable[[], ReleaseRef | None], online: bool
) -> tuple[dict[str, Any], str]:
    """The config.json of the model a track's fine-tune trains, and where it came from: `model` (a local
    model folder, or `org/name[@revision]` on the Hub) when given, else the track's newest known release,
    else the newest folder of a local source's release directory, else the `main` of a hub-refs source's repo.

    Args:
        spec: the track.
        model: the model to plan on instead of the track's.
        newest: the track's newest known release (`newest_release`), asked only when `model` is None.
        online: whether a config may come from the Hub, or only from its local cache.

    Raises:
        PlanModelError: no model is known (a hub-repos track with no release yet), or its config cannot be
            read from the Hub.
        ModelFolderError: a local model folder has no config.json.
        ModelRefError: `model` is a malformed Hub reference.
    """
    if model is not None:
        parsed = parse_model_ref(model)
        if isinstance(parsed, Path):
            return read_config(path=parsed), str(model)
        return _hub_config(spec, parsed.repo_id, parsed.revision, online=online)
    release = newest()
    if release is not None:
        if release.path is not None:
            return read_config(path=release.path), str(release.path)
        return _hub_config(spec, release.repo_id, release.revision, online=online)
    found = spec.source.newest_model()
    if isinstance(found, Path):
        return read_config(path=found), str(found)
    if found is not None:
        return _hub_config(spec, *found, online=online)
    raise PlanModelError(
        f"track {spec.name} {spec.source.unknown_model()}, so its model is unknown: pass --model with a model "
        f"folder or org/name@revision ({MODELS_HINT}).",
        track=spec.name,
    )


def _hub_config(spec: TrackSpec, repo_id: str, revision: str, *, online: bool) -> tuple[dict[str, Any], str]:
    where = f"{repo_id}@{revision}"
    try:
        path = fetch_config(repo_id=repo_id, revision=revision, local_only=not online)
    except (HubNotFoundError, HubPermissionError, HubUnavailableError) as exc:
        raise PlanModelError(
            f"track {spec.name}: the config of {where} cannot be read ({exc}) Pass --model with a local model "
            f"folder that holds its config.json ({MODELS_HINT}).",
            track=spec.name,
        ) from None
    return read_config(path=path), where


def plan_track(
    spec: TrackSpec, *, config: dict[str, Any], origin: str, pool_gpus: int, gpu_memory_gib: float
) -> FinetunePlan:
    """The plan of a track's fine-tune on a model config (its LoRA row: the recipe's adapter, or peft's default).

    Raises:
        ModelFolderError: the config does not describe a causal LM transformers can build.
        FinetuneConfigError: the recipe's LoRA names no module of the model.
    """
    recipe, launch = spec.finetune.recipe, spec.finetune.launch
    shape = model_shape(config=config, lora=recipe.peft or Lora.model_validate({}), origin=origin)
    return plan_finetune(
        shape=shape,
        recipe=recipe,
        processes=launch.processes,
        distributed=launch.distributed,
        pool_gpus=pool_gpus,
        gpu_memory_gib=gpu_memory_gib,
    )


def heading(spec: TrackSpec, *, origin: str) -> str:
    """The first line of a track's plan table."""
    return f"plan of track {spec.name} on {origin}"


def check_fits(spec: TrackSpec, *, plan: FinetunePlan, origin: str) -> None:
    """Refuse a track whose fine-tune does not fit the pool, with the plan's table.

    Raises:
        GpuFitError: the track's set-up needs more GPUs than the pool's workers have, or more memory per process.
    """
    if plan.track_fits:
        return
    setup = plan.track.setup
    raise GpuFitError(
        f"track {spec.name} does not fit the pool's {plan.pool_gpus} GPU(s) of {plan.gpu_memory_gib:g} GiB: its "
        f"fine-tune ({setup.label} on {setup.processes} GPU(s)) needs {plan.track.total / 2**30:.2f} GiB per process. "
        "Train a LoRA adapter (finetune.recipe.peft), turn on finetune.recipe.gradient_checkpointing, lower "
        "batch_size or seq_len, or shard over more GPUs (finetune.launch: {processes: 8, distributed: fsdp}); "
        "if the pool's GPUs are other than these, set GRAFT_POOL_GPUS and GRAFT_POOL_GPU_MEMORY_GIB.\n"
        + render(plan, heading=heading(spec, origin=origin)),
        track=spec.name,
    )
