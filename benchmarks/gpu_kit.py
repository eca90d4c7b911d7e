"""Wheels that let `gpu_check.py` run on an offline CUDA machine whose image has PyTorch but not the rest.

    python benchmarks/gpu_kit.py [--python 3.12] [--out .gpu-kit/wheels]
    bash benchmarks/gpu_check.sh [gpu_check.py's arguments]          # then, on the CUDA machine

It takes the packages `gpu_check.py` imports (lm-eval, transformers, accelerate, peft, pydantic and what they
require, extras included) at the exact versions this environment runs, leaves out those a CUDA image brings
built for itself (PyTorch and its CUDA libraries, NumPy, SciPy, pandas, PyArrow, scikit-learn, tokenizers,
safetensors, lxml, hf-xet) or uses to build Graftwork's wheel there (setuptools), and puts a wheel of each for
the machine's Python in `--out` (a pure-Python package published only as an sdist is built into a wheel here).
The folder is emptied first, so it never holds two versions of a package. It prints each wheel and the total.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("lm_eval", "transformers", "accelerate", "peft", "pydantic", "huggingface_hub", "pyyaml", "zstandard")
"""What `gpu_check.py` imports beyond PyTorch (Graftwork's own wheel is built on the machine from the tree)."""

FROM_IMAGE = frozenset(
    {"torch", "triton", "numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "tokenizers", "safetensors"}
    | {"lxml", "hf-xet", "setuptools"}
)
"""Compiled, large, and built for the CUDA image, or its build tool (Graftwork's wheel is built with it): used as
the image has them. The wheels travel within a 64 MiB budget, the working tree included."""

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def closure(*, roots: tuple[str, ...], python: str) -> dict[str, str]:
    """The installed version of every distribution `roots` need, by canonical name, without `FROM_IMAGE` and
    the CUDA libraries (`nvidia-*`).

    Raises:
        importlib.metadata.PackageNotFoundError: a needed distribution is not installed here (run `make setup`).
    """
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    found: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in FROM_IMAGE or name.startswith("nvidia-"):
            continue
        extras = {"", *requirement.extras}
        if all((name, extra) in done for extra in extras):
            continue
        done |= {(name, extra) for extra in extras}
        distribution = metadata.distribution(requirement.name)
        found[name] = distribution.version
        for text in distribution.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate(environment | {"extra": e}) for e in extras):
                todo.append(needed)
    return found


def fetch(*, name: str, version: str, python: str, out: Path) -> Path:
    """A wheel of `name==version` for CPython `python` on x86-64 Linux in `out`: downloaded, or built from the
    sdist when the package publishes no wheel (only a pure-Python one is accepted).

    Raises:
        RuntimeError: pip found neither, or the built wheel is not pure Python.
    """
    pin = f"{name}=={version}"
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    download += ["--python-version", python, "--implementation", "cp", *platforms, "--dest", str(out), pin]
    with tempfile.TemporaryDirectory() as scratch:
        if subprocess.run(download, capture_output=True, text=True).returncode != 0:
            build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", scratch, pin]
            built = subprocess.run(build, capture_output=True, text=True)
            wheels = list(Path(scratch).glob("*-none-any.whl"))
            if built.returncode != 0 or not wheels:
                raise RuntimeError(f"no wheel of {pin} for CPython {python}, nor a pure-Python sdist: {built.stderr}")
            shutil.move(wheels[0], out / wheels[0].name)
    (wheel,) = (p for p in out.glob("*.whl") if canonicalize_name(p.name.split("-")[0]) == name)
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="3.12", help="the CUDA machine's Python, major.minor")
    parser.add_argument("--out", type=Path, default=Path(".gpu-kit/wheels"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    total = 0
    for name, version in sorted(closure(roots=ROOTS, python=args.python).items()):
        wheel = fetch(name=name, version=version, python=args.python, out=args.out)
        total += wheel.stat().st_size
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.2f} MiB  in {args.out} (left to the image: {', '.join(sorted(FROM_IMAGE))})")


if __name__ == "__main__":
    main()
