"""The files Graftwork ships as package data of `graftwork.deployments` (example tracks, eval suites,
accelerate configs), found with importlib.resources so that a wheel install finds them as a source
checkout does. Flows read them as data; no code of the deployments layer is imported."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ModelFolderError

PACKAGE = "graftwork.deployments"
ACCELERATE_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero3.yaml"}


def shipped_file(*parts: str) -> Path:
    """The path of a shipped file, e.g. `shipped_file("tracks", "testbed-demo.yaml")`.

    Raises:
        ModelFolderError: no such file in the installed package (a broken install: reinstall Graftwork).
    """
    path = Path(str(resources.files(PACKAGE).joinpath(*parts)))
    if not path.is_file():
        raise ModelFolderError(
            f"{'/'.join(parts)} is missing from the installed {PACKAGE} package; reinstall Graftwork.", path=path
        )
    return path


def accelerate_config(kind: str) -> Path:
    """The shipped accelerate config for a kind of distribution (`ddp`, `fsdp` or `deepspeed`)."""
    return shipped_file("accelerate", ACCELERATE_CONFIGS[kind])
