"""The deployments Graftwork serves and declares: names, entrypoints, schedules and limits agree."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from prefect.flows import Flow
from prefect.utilities.importtools import import_object

from graftwork.deployments.serve import build_deployments

ROOT = Path(__file__).parents[2]


def test_serve_builds_a_watcher_per_track_and_one_recycle_slot() -> None:
    built = {d.name: d for d in build_deployments(tracks=["a", "b"], watch_every=timedelta(minutes=5))}
    assert set(built) == {
        "recycle-then-finetune", "run-series", "transfer", "evaluate", "promote", "rollback", "watch-a", "watch-b",
    }  # fmt: skip
    assert built["watch-a"].parameters == {"track": "a", "dispatch": "deployment"}
    assert built["watch-a"].schedules[0].schedule.interval == timedelta(minutes=5)
    assert "track:a" in built["watch-a"].tags
    assert built["recycle-then-finetune"].concurrency_limit == 1


def test_prefect_yaml_names_real_entrypoints_and_the_example_tracks() -> None:
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = set()
    for deployment in config["deployments"]:
        assert deployment["entrypoint"].startswith("graftwork.flows."), deployment["entrypoint"]
        assert isinstance(import_object(deployment["entrypoint"]), Flow), deployment["entrypoint"]
        assert deployment["work_pool"]["name"] in {"cpu", "gpu"}
        names.add(deployment["name"])
    watched = {n.removeprefix("watch-") for n in names if n.startswith("watch-")}
    assert watched == {p.stem for p in (ROOT / "deployments" / "tracks").glob("*.yaml")}
    recycle = next(d for d in config["deployments"] if d["name"] == "recycle-then-finetune")
    assert recycle["work_pool"]["name"] == "gpu" and recycle["concurrency_limit"] == 1


def test_served_deployments_name_their_flows_by_module() -> None:
    for deployment in build_deployments(tracks=["a"], watch_every=timedelta(minutes=5)):
        assert isinstance(import_object(deployment.entrypoint), Flow), deployment.entrypoint
