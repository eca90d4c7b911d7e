"""The wheel: built from the repository, installed into a fresh venv outside it, it runs with the files it
ships (the demo track, the migrations) and puts nothing but `graftwork` at the top of site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from graftwork.storage.db import head_revision

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the files git knows (so that the build leaves nothing in the tree)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("graftwork-*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_data_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"graftwork", wheel.name.split("-py3")[0] + ".dist-info"}
    for shipped in (
        "graftwork/errors.py",
        "graftwork/tasks/engine/operations.py",
        "graftwork/deployments/tracks/testbed-demo.yaml",
        "graftwork/deployments/suites/paper.yaml",
        "graftwork/deployments/accelerate/fsdp.yaml",
        "graftwork/deployments/prefect.yaml",
        "graftwork/storage/migrations/script.py.mako",
        "graftwork/tasks/testbed/shipped/seed0/files.json",
        "graftwork/tasks/testbed/shipped/seed0/tasks/testbed_data.py",
        "graftwork/tasks/testbed/shipped/seed0/releases/M4/model.safetensors",
        "graftwork/storage/migrations/versions/0002_vocabulary_and_finetune_runs.py",
    ):
        assert shipped in names, shipped
    assert not [n for n in names if n.startswith(("graftwork/tests/", "graftwork/benchmarks/", "graftwork/docker/"))]


def test_the_installed_wheel_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    # The dependencies (torch, prefect, ...) come from this test's environment; graftwork from the wheel only.
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in sys.path if p.endswith("site-packages")))
    env = {**os.environ, "GRAFT_DATA_DIR": str(tmp_path / "data"), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("GRAFT_DATABASE_URL", None)
    env.pop("GRAFT_BLOB_URL", None)

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = run(str(python), "-c", "import graftwork, importlib.util; print(graftwork.__file__, "
                "importlib.util.find_spec('tasks'), importlib.util.find_spec('flows'))")  # fmt: skip
    assert where.split() == [str(site / "graftwork" / "__init__.py"), "None", "None"]
    assert "Graftwork: carry fine-tuning over" in run(str(venv / "bin" / "graft"), "--help")
    track = site / "graftwork" / "deployments" / "tracks" / "testbed-demo.yaml"
    assert "added track testbed-demo (local releases, iterative recycling)" in run(
        str(venv / "bin" / "graft"), "track", "add", str(track)
    )
    upgraded = run(str(venv / "bin" / "graft"), "db", "upgrade")
    assert upgraded.strip().endswith(f"revision {head_revision()} → {head_revision()}")
    assert "testbed-demo" in run(str(venv / "bin" / "graft"), "track", "list")
