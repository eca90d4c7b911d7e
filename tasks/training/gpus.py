"""Which GPUs a run may use: a lease on a set of free GPUs of this machine, held for the run's GPU work.

Each physical GPU has a lock file in one folder of the machine (`/tmp/graftwork-gpus`, whatever a worker's
TMPDIR or data dir); a run takes as many as its launch has processes, waits while fewer are free, and gives
them back when its block ends, or when its process dies (the kernel drops a dead process's locks, so a killed
run never holds a GPU). GPUs are named as the machine numbers them: a worker started with
`CUDA_VISIBLE_DEVICES=4,5,6,7` leases among 4..7 and pins a launch to, say, `CUDA_VISIBLE_DEVICES=4,5`, so
workers restricted to different GPUs and runs of different tracks never land on the same GPU.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ...errors import LaunchConfigError

log = logging.getLogger(__name__)

LOCK_DIR = Path("/tmp/graftwork-gpus")
"""Where the machine's GPU locks live: one folder for every worker and data dir of the machine."""


def machine_gpus(*, visible: str | None) -> list[str]:
    """The GPUs this process may use, as the machine names them: the entries of `visible` (the process's
    `CUDA_VISIBLE_DEVICES`, which the settings read) when it is set, else 0..N-1 (none without CUDA)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [name.strip() for name in (visible or "").split(",") if name.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


@dataclass(frozen=True)
class GpuLease:
    """GPUs held for a step: their names as the machine numbers them (what a launched run's
    `CUDA_VISIBLE_DEVICES` lists), and the first one's index among this process's GPUs (its CUDA device
    here). No names on a machine without GPUs."""

    names: tuple[str, ...] = ()
    device: int = 0

    def env(self) -> dict[str, str]:
        """The environment that pins a launched run to these GPUs (nothing to pin without GPUs)."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.names)} if self.names else {}

    def describe(self) -> str:
        """Where a launched run trains, as its report says: `cuda:0,1` (the leased GPUs), or `cpu` without any."""
        return f"cuda:{','.join(self.names)}" if self.names else "cpu"

    def pin(self) -> None:
        """Make the first leased GPU this process's CUDA device (`cuda` then means it); no-op without GPUs."""
        if self.names:
            import torch

            torch.cuda.set_device(self.device)


@contextmanager
def gpu_lease(
    *, count: int, gpus: Sequence[str], lock_dir: Path = LOCK_DIR, poll_seconds: float = 5.0
) -> Iterator[GpuLease]:
    """Hold `count` free GPUs of `gpus` (this process's, as `machine_gpus` names them) for the block.

    Yields the lease, its GPUs in the order of `gpus`; on a machine without GPUs, an empty lease at once.

    Raises:
        LaunchConfigError: the run needs more GPUs than the worker has (it would wait for ever).
    """
    if not gpus:
        yield GpuLease()
        return
    if count > len(gpus):
        raise LaunchConfigError(
            f"the run needs {count} GPUs and this worker has {len(gpus)}; lower the track's "
            f"finetune.launch.processes to at most {len(gpus)}, or run it on a larger worker.",
            path=None,
        )
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        with ExitStack() as held:
            leased: list[str] = []
            for gpu in gpus:
                if _try_lock(held, Path(lock_dir) / f"gpu-{gpu}.lock"):
                    leased.append(gpu)
                if len(leased) == count:
                    try:
                        yield GpuLease(tuple(leased), list(gpus).index(leased[0]))
                    finally:
                        _free_cached_memory()
                    return
        if not waited:
            log.info("waiting for %d free GPU(s) of %d", count, len(gpus))
            waited = True
        time.sleep(poll_seconds)


def _try_lock(held: ExitStack, path: Path) -> bool:
    """Lock `path` for as long as `held` is open, if no other lease holds it."""
    handle: IO[str] = held.enter_context(path.open("a"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _free_cached_memory() -> None:
    """Give back what this process's CUDA caching allocator holds (models evaluated here), before the GPUs go
    to another run."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
