"""Re-take the README's picture of a recycle run in the Prefect UI (docs/prefect-run.png: the run
with its track and release tags, its task graph and its logs).

Run `make demo` (or `graft demo --data-dir DIR`) first. This starts `graft ui` on that data dir on
127.0.0.1, finds the newest completed recycle-then-finetune run that promoted its candidate, opens
its page in headless Chromium (Debian's `chromium` package), saves the picture and stops the
server.

    python benchmarks/screenshot.py [--data-dir ~/.graftwork] [--out docs/prefect-run.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).parents[1]
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("~/.graftwork").expanduser())
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "prefect-run.png")
    parser.add_argument("--size", default="1400,900", help="browser window WIDTH,HEIGHT")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs Chromium: apt-get install chromium")
    if not (args.data_dir / "prefect" / "prefect.db").is_file():
        sys.exit(f"no Prefect database under {args.data_dir}; run `graft demo --data-dir {args.data_dir}` first")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    graft = Path(sys.executable).parent / "graft"
    server = subprocess.Popen(
        [str(graft), "ui", "--data-dir", str(args.data_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"{api}/health", seconds=90)
        url = f"http://127.0.0.1:{port}/runs/flow-run/{_newest_promoting_run(api)}"
        _screenshot(browser, url, args.out, size=args.size)
        print(f"saved {args.out} ({url})")
    finally:
        server.terminate()
        server.wait(timeout=30)


def _screenshot(browser: str, url: str, out: Path, *, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *BROWSER_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--virtual-time-budget=15000",
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not out.is_file():  # Chromium exits 0 when it cannot write the picture (an --out that is a folder)
        raise SystemExit(f"Chromium wrote no picture at {out}; --out names the PNG file to write.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _post(url: str, body: dict[str, object]) -> object:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _newest_promoting_run(api: str) -> str:
    """The id of the newest completed recycle run that promoted its candidate."""
    runs = _post(
        f"{api}/flow_runs/filter",
        {
            "flows": {"name": {"any_": ["recycle-then-finetune"]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "sort": "START_TIME_DESC",
            "limit": 20,
        },
    )
    assert isinstance(runs, list)
    for run in runs:
        artifacts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
        assert isinstance(artifacts, list)
        if any(a.get("description") == "promoted" for a in artifacts):
            return str(run["id"])
    sys.exit("no completed recycle run promoted its candidate; run the demo first")


if __name__ == "__main__":
    main()
