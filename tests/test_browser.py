"""The browser helper (tests/browser.py) against a real Prefect server with its UI: a small flow run's task runs
and its keyed markdown artifact are on its page, as a person sees it in Chromium.

The server (`prefect server start` on a free 127.0.0.1 port, UI and services on) and the flow run (a process
of its own) get a clean environment and a fresh PREFECT_HOME; the server is stopped at the end, on failure too.
What the page is, in Prefect 3.8:
- `/runs/flow-run/<id>`, the link Prefect logs ("View at ..."), is the V1 UI: only `/` goes to the V2 UI, the
  default. It opens on its Logs tab, whatever `?tab=` says (it resets the tab while the run loads), and the
  log lines there name the task runs too; so the test clicks the "Task Runs" and "Artifacts" tabs. Artifacts
  made in a task are drawn below the window, in a list that draws its rows only in view: the page is scrolled.
- `/v2/runs/flow-run/<id>?tab=TaskRuns` and `?tab=Artifacts` open those tabs of the V2 UI directly.
Without Chromium the test skips, saying so, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from graftwork.fs import die_with_parent
from tests.browser import chromium_or_skip, open_browser
from tests.service import free_port

SERVER_START_TIMEOUT_S = 180.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The flow run the page shows: three task runs, a keyed markdown artifact made in one of them and a progress
# artifact of the flow run's own.
FLOW = """
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run


@task
def load_numbers():
    return [1, 2, 3]


@task
def add_them(numbers):
    return sum(numbers)


@task(name="write-decision")
def decide(total):
    create_markdown_artifact(key="demo-decision", markdown="# Decision\\npromote", description="promoted")
    return "promote"


@flow(name="browser-check")
def check():
    progress = create_progress_artifact(progress=0.0, description="checking")
    decide(add_them(load_numbers()))
    update_progress_artifact(progress, progress=100.0)
    print("FLOW_RUN_ID", flow_run.get_id())


check()
"""


@contextmanager
def _prefect_server(tmp: Path) -> Iterator[str]:
    """A Prefect server with its UI on 127.0.0.1 for the block; yields its base URL (the UI's root)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PATH": PATH,
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "PREFECT_HOME": str(tmp / "server-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{base}/api",
        # The UI's files are copied here rather than into the virtual environment that other servers share.
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(tmp / "ui-static"),
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
            preexec_fn=die_with_parent(),
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"the Prefect server exited ({server.returncode}); its log:\n{log.read_text()[-3000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not answer in {SERVER_START_TIMEOUT_S:.0f} s; its log is {log}")
            time.sleep(0.25)
        yield base
    finally:
        _stop(server)


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.returncode is None:
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _run_flow(tmp: Path, *, api: str) -> str:
    """Run FLOW against the server at `api` in a process of its own; return the flow run's id."""
    script = tmp / "check_flow.py"
    script.write_text(FLOW)
    env = {
        "PATH": PATH,
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "PREFECT_HOME": str(tmp / "client-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the flow failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.split("FLOW_RUN_ID", 1)[1].split()[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flow_run_page_shows_task_runs_and_artifact(tmp_path: Path) -> None:
    chromium_or_skip()
    with _prefect_server(tmp_path) as base:
        run_id = _run_flow(tmp_path, api=f"{base}/api")
        api = httpx.post(f"{base}/api/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}, timeout=30)
        tasks = sorted(run["name"] for run in api.json())
        assert [name.rsplit("-", 1)[0] for name in tasks] == ["add_them", "load_numbers", "write-decision"]

        with open_browser() as browser:
            # V1, Prefect's own link to the run.
            with browser.open(f"{base}/runs/flow-run/{run_id}") as tab:
                tab.read(wait_for=["3 Task runs", "Task Runs", "Artifacts"])
                tab.click("Task Runs")
                runs = tab.read(wait_for=["(3 Completed)", *tasks], scroll=True)
                tab.click("Artifacts")
                artifacts = tab.read(wait_for=["demo-decision", "promoted"], scroll=True)
            assert "tab=Task+Runs" in runs.url, runs.url
            assert "tab=Artifacts" in artifacts.url, artifacts.url
            assert "MARKDOWN\ndemo-decision" in artifacts.text and "promoted" in artifacts.text, artifacts.text

            # V2, the default UI, whose tabs open from the URL.
            runs = browser.render(f"{base}/v2/runs/flow-run/{run_id}?tab=TaskRuns", wait_for=tasks, scroll=True)
            artifacts = browser.render(
                f"{base}/v2/runs/flow-run/{run_id}?tab=Artifacts", wait_for=["demo-decision", "promoted"], scroll=True
            )
            assert "tab=TaskRuns" in runs.url and "tab=Artifacts" in artifacts.url, (runs.url, artifacts.url)
            assert "demo-decision" in artifacts.text and "promoted" in artifacts.text, artifacts.text
