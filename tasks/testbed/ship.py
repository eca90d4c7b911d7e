"""Shipping a test bed: `python -m graftwork.tasks.testbed.ship DIR` makes the bed that
`graft testbed build --out DIR` pretrained from scratch (with its control) the one shipped with the
package, and writes its manifest of sha256 per file and the processor it was pretrained on. Run it
after bumping `build.BED_FORMAT`."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from ...errors import TestbedError
from ...fs import write_json
from .shipped import FILES, SHIPPED_PARTS, cpu_signature, shipped_root


def ship(built: Path, *, into: Path) -> dict[str, str]:
    """Make the bed built at `built` (from scratch, with its control) the shipped bed at `into`; return
    the manifest's files (relative path → sha256).

    Raises:
        TestbedError: `built` is not a test bed built with its control.
    """
    made = json.loads((built / "testbed.json").read_text()) if (built / "testbed.json").is_file() else {}
    if not made.get("control"):
        raise TestbedError(f"{built} is not a test bed built with its control; build one with `graft testbed build`.")
    if into.exists():
        shutil.rmtree(into)
    files = {}
    for part in SHIPPED_PARTS:
        for path in sorted(p for p in (built / part).rglob("*") if p.is_file()):
            relative = path.relative_to(built).as_posix()
            (into / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, into / relative)
            files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"key": made["key"], "seed": made["seed"], "versions": made["versions"], "built_on": cpu_signature()}
    write_json(into / FILES, {**manifest, "files": files})
    return files


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m graftwork.tasks.testbed.ship DIR [--name seed0]`."""
    parser = argparse.ArgumentParser(prog="graftwork.tasks.testbed.ship", description=main.__doc__)
    parser.add_argument("built", type=Path, help="A test bed built by `graft testbed build --out DIR`.")
    parser.add_argument("--name", default="seed0", help="The shipped bed's folder under shipped/.")
    ns = parser.parse_args(argv)
    files = ship(ns.built.resolve(), into=shipped_root() / ns.name)
    size = sum((shipped_root() / ns.name / f).stat().st_size for f in files)
    print(f"shipped {len(files)} files ({size / 1e6:.2f} MB) as {shipped_root() / ns.name}")


if __name__ == "__main__":
    main()
