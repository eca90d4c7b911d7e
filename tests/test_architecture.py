"""The package's shape: one name on import, imports that point one way, small modules, one error tree."""

from __future__ import annotations

import ast
import builtins
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import graftwork.errors as errors
from graftwork.errors import GraftError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deployments", "flows", "operations", "tasks", "storage")
BOTTOM = {"errors", "fs", "terms"}
# What each part may import of Graftwork (besides itself and the bottom).
ALLOWED = {
    "deployments": {"flows", "operations", "tasks", "storage"},
    "flows": {"operations", "tasks", "storage"},
    "operations": {"tasks", "storage"},
    "tasks": set(),
    "storage": set(),
}
# Inside tasks/: what each room may import (besides itself and the bottom).
TASK_ROOMS = {
    "engine": {"io"},
    "io": set(),
    "training": {"io", "suite", "evaluate"},
    "testbed": {"io", "suite", "evaluate", "starts"},
    "starts": {"io", "engine", "training", "suite", "evaluate", "paired"},
    "hub": {"io"},
    "sources": {"hub"},
    "evaluate": set(),
    "gate": set(),
}
MAX_LINES = 400


def _modules() -> list[Path]:
    files = [p for p in ROOT.glob("*.py")]
    for package in PACKAGES:
        files += [p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]
    return sorted(files)


def _imported(path: Path) -> set[tuple[str, ...]]:
    """The Graftwork modules a file imports, as paths of names under `graftwork` (relative imports resolved)."""
    package = ["graftwork", *path.relative_to(ROOT).with_suffix("").parts[:-1]]
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = [*base, *(node.module.split(".") if node.module else [])]
            else:
                name = (node.module or "").split(".")
            if name[0] == "graftwork":
                found.add(tuple(name[1:]))
        elif isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "graftwork"}
    return found


def test_the_package_imports_as_graftwork_and_nothing_else(tmp_path: Path) -> None:
    script = (
        "import importlib.util, graftwork.tasks, graftwork.flows, graftwork.storage, graftwork.deployments\n"
        "print([importlib.util.find_spec(n) is None for n in ('tasks', 'flows', 'storage', 'deployments')])\n"
        "print(graftwork.tasks.__name__, graftwork.errors.GraftError.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[True, True, True, True]", "graftwork.tasks graftwork.errors"]


def test_imports_point_one_way() -> None:
    broken = []
    for path in _modules():
        part = path.relative_to(ROOT).parts[0] if path.parent != ROOT else "bottom"
        for name in _imported(path):
            target = name[0] if name else ""
            if target in BOTTOM or (part == "bottom" and not name):
                continue
            if part == "bottom" or (target != part and target not in ALLOWED[part]):
                broken.append(f"{path.relative_to(ROOT)} imports graftwork.{'.'.join(name)}")
            elif part == target == "tasks" and len(name) > 1 and path.parent != ROOT / "tasks":
                room = path.relative_to(ROOT / "tasks").parts[0].removesuffix(".py")
                other = name[1]
                if other != room and other not in TASK_ROOMS[room]:
                    broken.append(f"{path.relative_to(ROOT)} (tasks/{room}) imports tasks.{other}")
    assert broken == []


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_error_is_in_one_tree_and_inherits_a_built_in() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert GraftError in classes and len(classes) > 30
    built_ins = {c for c in vars(builtins).values() if isinstance(c, type) and issubclass(c, BaseException)}
    for cls in classes:
        assert issubclass(cls, GraftError), cls
        if cls is not GraftError:
            assert set(cls.__mro__) & (built_ins - {Exception, BaseException}), f"{cls.__name__} inherits no built-in"
    defined_elsewhere = [
        f"{path.relative_to(ROOT)}: {node.name}"
        for path in _modules()
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and (node.name.endswith("Error") or {ast.unparse(b) for b in node.bases} & {"Exception", "BaseException"})
    ]
    assert defined_elsewhere == []


def test_an_error_carries_the_object_it_is_about_and_refuses_others() -> None:
    error = errors.ShapeMismatchError("w has two shapes", tensor="w", shapes={"base": (2, 3), "target": (3, 2)})
    assert (error.tensor, error.shapes, str(error)) == ("w", {"base": (2, 3), "target": (3, 2)}, "w has two shapes")
    assert isinstance(error, ValueError)
    missing = errors.TensorSetMismatchError("the base model lacks 'w'", tensor="w")
    assert str(missing) == "the base model lacks 'w'"  # not KeyError's quoted form
    assert errors.BlobMissingError("gone", blob="ab", owner="diff-1:x").owner == "diff-1:x"
    assert errors.NotFoundError("no such track").ref is None
    with pytest.raises(TypeError, match=r"ModelFolderError carries path, not \['tensor'\]"):
        errors.ModelFolderError("bad", tensor="w")


def test_the_cli_catches_the_root_only() -> None:
    source = (ROOT / "deployments" / "console.py").read_text()
    handlers = [
        ast.unparse(node.type)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ExceptHandler) and node.type is not None
    ]
    assert handlers == ["GraftError"]


# Where the environment is read or written: the settings alone.
ENVIRONMENT_READERS = {
    "operations/settings.py": "the settings, and the copy of the environment every child process gets",
}


def test_only_settings_reads_or_writes_the_environment() -> None:
    found = {
        str(path.relative_to(ROOT))
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv"))
        or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and {"environ", "getenv"} & {a.name for a in node.names}
        )
    }
    assert found == set(ENVIRONMENT_READERS)


def _prefect_decorators(path: Path) -> set[str]:
    """The Prefect decorators (`flow`, `task`) a module's functions carry."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Name) and target.id in ("flow", "task"):
                    found.add(target.id)
    return found


def test_flows_holds_flows_and_their_steps_and_operations_neither() -> None:
    flows = {p.name: _prefect_decorators(p) for p in (ROOT / "flows").glob("*.py") if p.name != "__init__.py"}
    assert [name for name, found in sorted(flows.items()) if not found] == []
    operations = {p.name: _prefect_decorators(p) for p in (ROOT / "operations").glob("*.py")}
    assert [name for name, found in sorted(operations.items()) if found] == []
