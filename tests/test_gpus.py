"""GPU leases: concurrent runs on one worker get disjoint GPUs, wait for free ones, and free them when they end
or die. Simulated GPU counts stand in for CUDA; the locks, processes and environment are real."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from graftwork.errors import LaunchConfigError
from graftwork.operations.settings import GraftSettings, Workspace
from graftwork.tasks.training.gpus import GpuLease, gpu_lease


def test_runs_on_one_worker_get_disjoint_gpus_and_wait_for_free_ones(tmp_path: Path) -> None:
    locks = tmp_path / "gpus"
    took: list[tuple[str, ...]] = []
    gpus = ["4", "5", "6", "7"]  # a worker started with CUDA_VISIBLE_DEVICES=4,5,6,7
    with (
        gpu_lease(count=1, lock_dir=locks, gpus=gpus) as first,
        gpu_lease(count=2, lock_dir=locks, gpus=gpus) as second,
    ):
        assert (first, second) == (GpuLease(("4",), device=0), GpuLease(("5", "6"), device=1))
        assert second.env() == {"CUDA_VISIBLE_DEVICES": "5,6"}  # the machine's names, not the worker's 1,2

        def third() -> None:
            with gpu_lease(count=2, lock_dir=locks, gpus=gpus, poll_seconds=0.05) as lease:
                took.append(lease.names)

        waiting = threading.Thread(target=third)
        waiting.start()
        time.sleep(0.3)
        assert took == []  # only GPU 3 is free: a 2-GPU run waits
    waiting.join(timeout=10)
    # the lowest free pair when it looked again: which one depends on when the two leases' locks were let go
    assert len(took) == 1 and took[0] in (("4", "5"), ("5", "6"), ("6", "7"))


def test_a_killed_run_frees_its_gpus(tmp_path: Path) -> None:
    locks = tmp_path / "gpus"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from graftwork.tasks.training.gpus import gpu_lease\n"
         f"with gpu_lease(count=2, lock_dir=Path({str(locks)!r}), gpus=['0', '1']):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    holder.kill()
    holder.wait()
    with gpu_lease(count=2, lock_dir=locks, gpus=["0", "1"], poll_seconds=0.05) as lease:
        assert lease.names == ("0", "1")


def test_no_gpus_means_no_pinning_and_too_many_is_refused(tmp_path: Path) -> None:
    with gpu_lease(count=8, lock_dir=tmp_path, gpus=[]) as lease:
        assert lease == GpuLease() and lease.env() == {}
        lease.pin()  # nothing to pin: torch's CUDA is never asked
    too_many = gpu_lease(count=4, lock_dir=tmp_path, gpus=["0", "1"])
    with pytest.raises(LaunchConfigError, match="the run needs 4 GPUs and this worker has 2; lower the track's"):
        too_many.__enter__()


def test_a_worker_leases_among_the_gpus_its_cuda_visible_devices_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's own variable reaches the lease through the settings, not read by the lease; on this CPU machine
    torch sees no GPU, so the worker has none to lease whatever the variable says."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    where = Workspace.from_settings(GraftSettings())
    assert where.visible_gpus == "4,5" and where.gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Workspace.from_settings(GraftSettings()).visible_gpus is None
