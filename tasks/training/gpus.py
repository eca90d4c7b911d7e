"""Which GPUs a run may use: a lease on a set of free GPUs of this machine, held for the run's GPU work.

Each GPU has a lock file in a folder shared by every run of the machine (the data dir's `gpus/`); a run takes
as many as its launch has processes, waits while fewer are free, and gives them back when its block ends, or
when its process dies (the kernel drops a dead process's locks, so a killed run never holds a GPU). The
lease names the GPUs as `CUDA_VISIBLE_DEVICES` numbers them for the worker, so runs of different tracks
share a machine without landing on the same GPU.
"""

from __future__ import annotations

import fcntl
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from ...errors import LaunchConfigError

log = logging.getLogger(__name__)

LOCK_DIR = Path(tempfile.gettempdir()) / "graftwork-gpus"
"""Where the machine's GPU locks live: one folder for every worker and data dir of the machine."""


def visible_gpus() -> int:
    """How many CUDA GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def gpu_lease(
    *, count: int, lock_dir: Path = LOCK_DIR, total: int | None = None, poll_seconds: float = 5.0
) -> Iterator[list[int]]:
    """Hold `count` free GPUs of the `total` this machine has (None: the visible ones) for the block.

    Yields the GPUs' numbers, lowest free first; on a machine without GPUs, the empty list at once.

    Raises:
        LaunchConfigError: the run needs more GPUs than the machine has (it would wait for ever).
    """
    total = visible_gpus() if total is None else total
    if total == 0:
        yield []
        return
    if count > total:
        raise LaunchConfigError(
            f"the run needs {count} GPUs and this worker has {total}; lower the track's finetune.launch.processes "
            f"to at most {total}, or run it on a larger worker.",
            path=None,
        )
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        with ExitStack() as held:
            ids: list[int] = []
            for gpu in range(total):
                if _try_lock(held, Path(lock_dir) / f"gpu-{gpu}.lock"):
                    ids.append(gpu)
                if len(ids) == count:
                    yield ids
                    return
        if not waited:
            log.info("waiting for %d free GPU(s) of %d", count, total)
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


def gpu_env(ids: list[int]) -> dict[str, str]:
    """The environment that pins a launched run to the leased GPUs (nothing to pin without GPUs)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in ids)} if ids else {}


def pin(ids: list[int]) -> None:
    """Make the first leased GPU this process's CUDA device (`cuda` then means it); no-op without GPUs."""
    if ids:
        import torch

        torch.cuda.set_device(ids[0])
