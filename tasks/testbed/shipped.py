"""The test bed as shipped: seed 0 built once and packaged (package data under `shipped/seed0/`), with a
manifest of every file's sha256, so that the demo, the tests and `replicate --quick` start at once.

A shipped bed is used by copying it into the folder asked for, each file checked against its
manifest as it is copied; a copy killed midway is resumed by the next, which keeps the files already checked.
`python -m graftwork.tasks.testbed.ship DIR` ships the bed that `graft testbed build --out DIR` built (from
scratch, with its control) in place of the shipped one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import resources
from pathlib import Path

from ...errors import TestbedError
from ...fs import file_sha256

FILES = "files.json"
SHIPPED_PARTS = ("releases", "control", "data", "tasks")
VERSION_KEY = "transformers_version"
ONLY_VERSION = "only transformers_version differs"


def shipped_root() -> Path:
    """Where the shipped beds are, in the installed package."""
    return Path(str(resources.files(__package__ or "graftwork.tasks.testbed") / "shipped"))


def find_shipped(*, key: str) -> Path | None:
    """The shipped bed made as `key` says (see `build.cache_key`), or None."""
    for manifest in sorted(shipped_root().glob(f"*/{FILES}")):
        if json.loads(manifest.read_text()).get("key") == key:
            return manifest.parent
    return None


def copy_shipped(root: Path, dest: Path, *, control: bool) -> None:
    """Copy the shipped bed at `root` into `dest`, checking each file's sha256 against the manifest (the
    control is left out unless asked for).

    A copy resumes where a killed one stopped: a file already in `dest` whose sha256 is the manifest's is kept as
    it is, and each file copied is written under a temporary name and renamed once its bytes are checked, so that
    a file in `dest` is always whole. Anything else in `dest` (a killed copy's temporary files, a control left by a
    copy that asked for it) is removed first.

    Raises:
        TestbedError: a file is missing or its bytes are not the ones shipped.
    """
    files: dict[str, str] = json.loads((root / FILES).read_text())["files"]
    wanted = {relative: sha256 for relative, sha256 in files.items() if control or not relative.startswith("control/")}
    _remove_others(dest, keep=set(wanted))
    for relative, sha256 in sorted(wanted.items()):
        target = dest / relative
        if not (target.is_file() and file_sha256(target) == sha256):
            _copy_checked(root, relative, target, sha256=sha256)


def _remove_others(dest: Path, *, keep: set[str]) -> None:
    """Remove the files under `dest` whose paths relative to it are not in `keep`, then the folders left empty."""
    for path in sorted(dest.rglob("*"), reverse=True):  # a folder's contents before the folder
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.relative_to(dest).as_posix() not in keep:
            path.unlink()


def _copy_checked(root: Path, relative: str, target: Path, *, sha256: str) -> None:
    """Copy the shipped file `relative` to `target` through a temporary sibling, renamed once its sha256 is checked.

    Raises:
        TestbedError: the file is missing or its bytes are not the ones shipped.
    """
    source = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            raise TestbedError(
                f"the shipped test bed's {relative} ({source}) hashes to {digest.hexdigest()}, not {sha256}; "
                "reinstall Graftwork, or build the bed with `graft testbed build --out DIR`.",
                path=source,
            )
        os.replace(partial, target)
    except FileNotFoundError:
        raise TestbedError(
            f"the shipped test bed lacks {relative} ({root}); reinstall Graftwork, or build the bed with "
            "`graft testbed build --out DIR`.",
            path=source,
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def cpu_signature() -> str:
    """This machine's processor as the pinned pretraining sees it: vendor and model name (from
    /proc/cpuinfo; the platform's name where there is none). The pinned kernels give the same bits on
    one processor model, but not on every one: a bed is bit for bit only where it was built."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return f"{fields.get('vendor_id', '?')} {fields.get('model name', platform.machine())}"


def built_on(root: Path | None = None) -> str | None:
    """The processor the shipped bed (by default seed 0's) was pretrained on, or None where it was not
    recorded."""
    root = root or shipped_root() / "seed0"
    return json.loads((root / FILES).read_text()).get("built_on")


def differences(built: Path, *, root: Path | None = None) -> list[str]:
    """How a test bed built from scratch at `built` differs from the shipped one (by default the seed-0
    bed): the shipped files it lacks or holds other bytes of, among the parts it has (a bed built
    without its control is compared without it). Empty when it is the shipped bed, bit for bit."""
    root = root or shipped_root() / "seed0"
    files: dict[str, str] = json.loads((root / FILES).read_text())["files"]
    parts = {part for part in SHIPPED_PARTS if (built / part).is_dir()}
    found = []
    for relative, sha256 in sorted(files.items()):
        if relative.split("/", 1)[0] not in parts:
            continue
        path = built / relative
        if not path.is_file():
            found.append(f"{relative}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            found.append(f"{relative}: {_how_it_differs(path, root / relative)}")
    return found


def _how_it_differs(built: Path, shipped: Path) -> str:
    """`other bytes`, or, for a JSON file that transformers wrote and that differs only in the version it records
    (`transformers_version`), which versions: a newer transformers writes the same config under its own number."""
    if built.suffix != ".json" or not shipped.is_file():
        return "other bytes"
    try:
        mine, theirs = json.loads(built.read_text()), json.loads(shipped.read_text())
    except (ValueError, UnicodeDecodeError):
        return "other bytes"
    if not (isinstance(mine, dict) and isinstance(theirs, dict)):
        return "other bytes"
    if {**mine, VERSION_KEY: None} != {**theirs, VERSION_KEY: None}:
        return "other bytes"
    return f"{ONLY_VERSION} ({mine.get(VERSION_KEY)}, shipped {theirs.get(VERSION_KEY)})"


def unexplained(found: list[str], *, root: Path | None = None) -> list[str]:
    """Of a rebuild's `differences`, those its processor and library versions do not explain: all but the configs
    that differ only in the transformers version they record on the processor model that built the shipped bed,
    and elsewhere the weight files' other bytes too."""
    found = [f for f in found if ONLY_VERSION not in f]
    if built_on(root) == cpu_signature():
        return found
    return [f for f in found if not f.endswith("/model.safetensors: other bytes")]
