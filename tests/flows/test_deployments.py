"""The deployments Graftwork serves and declares: names, entrypoints, schedules and limits agree."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from prefect.flows import Flow
from prefect.utilities.importtools import import_object

from graftwork.deployments.serve import build_deployments

ROOT = Path(__file__).parents[2]
DATA = Path("/srv/graftwork")


def test_serve_watches_every_track_from_one_schedule_and_starts_passes_on_demand() -> None:
    built = {d.name: d for d in build_deployments(watch_every=timedelta(minutes=5), data_dir=DATA)}
    assert set(built) == {
        "recycle-then-finetune", "run-series", "backport", "transfer", "evaluate", "promote", "rollback",
        "watch-releases", "watch-all",
    }  # fmt: skip
    assert built["watch-all"].schedules[0].schedule.interval == timedelta(minutes=5)
    assert built["watch-all"].entrypoint == "graftwork.flows.watch.watch_all_tracks"
    assert built["watch-releases"].entrypoint == "graftwork.flows.watch.watch_releases"
    assert not built["watch-releases"].schedules
    # the runs this process serves work on its data dir (`graft --data-dir DIR serve`), whatever their caller
    assert {name: d.parameters for name, d in built.items()} == {name: {"data_dir": str(DATA)} for name in built}
    on_pool = {d.name for d in build_deployments(watch_every=timedelta(minutes=5), data_dir=DATA, recycle_pool="gpu")}
    assert on_pool == set(built) - {"recycle-then-finetune"}  # its pool's workers run it


def test_prefect_yaml_names_real_entrypoints() -> None:
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    served = {d.name for d in build_deployments(watch_every=timedelta(minutes=60), data_dir=DATA)}
    for deployment in config["deployments"]:
        assert deployment["entrypoint"].startswith("graftwork.flows."), deployment["entrypoint"]
        assert isinstance(import_object(deployment["entrypoint"]), Flow), deployment["entrypoint"]
        assert deployment["work_pool"]["name"] in {"cpu", "gpu"}
    assert {d["name"] for d in config["deployments"]} == served  # prefect.yaml declares what serve serves
    by_name = {d["name"]: d for d in config["deployments"]}
    assert by_name["recycle-then-finetune"]["work_pool"]["name"] == "gpu"
    # The gpu pool's limit (one run per GPU) governs: a deployment limit of 1 would run one track at a time.
    assert "concurrency_limit" not in by_name["recycle-then-finetune"]
    built = {d.name: d for d in build_deployments(watch_every=timedelta(minutes=60), data_dir=DATA)}
    assert built["recycle-then-finetune"].concurrency_limit is None
    assert by_name["watch-all"]["schedules"] and by_name["watch-releases"]["parameters"] == {"dispatch": "deployment"}


def test_served_deployments_name_their_flows_by_module() -> None:
    for deployment in build_deployments(watch_every=timedelta(minutes=5), data_dir=DATA):
        assert isinstance(import_object(deployment.entrypoint), Flow), deployment.entrypoint
