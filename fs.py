"""File-system helpers every layer may use: atomic output folders and files, fsync, JSON, sizes.

An output is written under a temporary sibling name and renamed into place only when it is
complete, so a failure or a kill never leaves a partial output at the final path. A resumable output's
sibling keeps its name across a kill, for the next run to finish.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DiskFullError, GraftError, NoAccessError, OutputExistsError

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies

FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up"}
DENIED = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "the file system is read-only"}

Say = Callable[[str], None]
"""Prints one line of a command's output (the CLI's `say`, or a test's list.append)."""


@contextmanager
def disk_errors(path: Path | str, *, doing: str) -> Iterator[None]:
    """Turn a full disk or a denied write under the block into a sentence that names `path` and what was
    being done (`doing`, e.g. "writing the diff"): `DiskFullError` or `NoAccessError`. Other errors pass as
    they are.

    Raises:
        DiskFullError: ENOSPC or EDQUOT.
        NoAccessError: EACCES, EPERM or EROFS.
    """
    try:
        yield
    except OSError as e:
        if isinstance(e, GraftError):
            raise
        where = Path(path)
        if e.errno in FULL:
            raise DiskFullError(
                f"{FULL[e.errno]} holding {where} while {doing}; nothing was left there half-written. Free space "
                f"there (df -h {where.parent}) or choose another place, then run it again.",
                path=where,
            ) from None
        if e.errno in DENIED:
            raise NoAccessError(
                f"{where}: {DENIED[e.errno]} while {doing}; choose a place you may write to, or fix its "
                "permissions, then run it again.",
                path=where,
            ) from None
        raise


@contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it to `out` only if the block completes.

    A failure (or a kill) leaves nothing at `out`, and a failure removes the folders made to hold it.
    Partial folders left by killed runs are removed the next time anything is written to the same `out`.
    With `durable`, every file and folder in it, and its parent after the rename, are fsynced, so the
    output also survives a power loss once this returns.

    Raises:
        OutputExistsError: `out` exists and `overwrite` is false.
        DiskFullError, NoAccessError: the disk filled up, or a write was denied (nothing is left at `out`).
    """
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists already; choose another output path or pass --overwrite.", path=out)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    with disk_errors(out, doing="making its folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(out)
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    try:
        with disk_errors(out, doing=f"writing {out.name}"):
            yield tmp
            if durable:
                fsync_tree(tmp)
            _move_into_place(tmp, out)
            if durable:
                fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_made(made)
        raise


@contextmanager
def resumable_output_dir(out: Path, *, done: Callable[[], bool] = lambda: False) -> Iterator[Path | None]:
    """Yield `out`'s staging folder, `.OUT.staging` beside it; rename it to `out` (replacing what is there) only if
    the block completes. Yield None, and touch nothing, when `done()` says, once this call's turn has come, that
    `out` already holds what the block would write (another call wrote it meanwhile).

    Unlike `atomic_output_dir`'s, the staging folder has a name that does not change and outlives a kill or Ctrl-C,
    so that the next call for the same `out` finds what the killed one wrote there: the block writes each file
    atomically and keeps those it finds already right. An error removes it, and the folders made to hold it. Calls
    for the same `out` take turns (a lock on its parent folder), so no two write in one staging folder at once.

    Raises:
        DiskFullError, NoAccessError: the disk filled up, or a write was denied (nothing is left at `out`).
    """
    out = Path(out).resolve()
    staging = out.parent / f".{out.name}.staging"
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    with disk_errors(out, doing="making its folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out.parent):
        if done():
            yield None
            return
        try:
            with disk_errors(out, doing=f"writing {out.name}"):
                staging.mkdir(exist_ok=True)
                yield staging
                _move_into_place(staging, out)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_made(made)
            raise


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (flock(2) on the folder itself, so that it gains no lock file) for the
    block; processes (and separate calls in one process) take turns."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the folder `tmp` to `out`; a folder already at `out` is replaced, then removed."""
    if out.exists():
        trash = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash)
    else:
        tmp.rename(out)


def _remove_made(made: list[Path]) -> None:
    """Remove the folders made to hold an output that failed, deepest first, while nothing else was put there."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


@contextmanager
def scratch_dir(*, prefix: str) -> Iterator[Path]:
    """A folder `PREFIX<pid>-<random>` in the system's temp dir, removed when the block ends. A process
    killed outright cannot remove its own, so those whose process no longer runs are removed first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{prefix}*-*"):
        pid = old.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as scratch:
        yield Path(scratch)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename: readers see all of it or none.

    Raises:
        DiskFullError, NoAccessError: as `disk_errors` (nothing is left at `path`).
    """
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with disk_errors(path, doing=f"writing {path.name}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_partials(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for a child process that must not outlive this one (Linux; None elsewhere): the
    kernel sends it SIGTERM when this process dies, by SIGKILL or the OOM killer too, and it exits at once
    if this process died before it started."""
    if sys.platform != "linux":
        return None
    parent = os.getpid()

    def arrange() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arrange


def as_ctrl_c(*_: object) -> None:
    """A signal handler (SIGTERM's) that stops the program as Ctrl-C does: it raises KeyboardInterrupt."""
    raise KeyboardInterrupt


def process_alive(pid: int) -> bool:
    """Whether process `pid` on this machine runs; a zombie (dead, not yet reaped: what a run whose worker
    died becomes where no init reaps orphans) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): signal 0 is all there is
    return stat.rpartition(")")[2].split()[0] != "Z"


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that the names created or renamed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_files(files: list[Path], dest: Path) -> None:
    """Copy files into `dest`, keeping their names."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dest / f.name)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def megabytes(n: int) -> str:
    """A byte count as `12.34 MB`."""
    return f"{n / 1e6:.2f} MB"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, hex.

    Raises:
        OSError: the file cannot be read.
    """
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
